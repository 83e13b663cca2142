package placement

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// Rule 1: 8 equal nodes that can each hold an expert get one expert each.
func TestOneExpertPerNode(t *testing.T) {
	for _, tc := range []struct {
		name     string
		model    Model
		capacity int64
	}{
		{"exactly one expert", small, 100},
		{"room for 2.5 experts", small, 250},
		{"mixtral 8x80GB", mixtral, 80e9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nodes := equalNodes(8, tc.capacity)
			p := mustCompute(t, Input{Nodes: nodes, Model: tc.model})
			wantLayout(t, p, nodes, `
node-00: e0
node-01: e1
node-02: e2
node-03: e3
node-04: e4
node-05: e5
node-06: e6
node-07: e7
`)
		})
	}
}

// Rule 2: fewer nodes share the experts in proportion to their capacity.
func TestSpreadByCapacity(t *testing.T) {
	t.Run("4 equal nodes", func(t *testing.T) {
		nodes := equalNodes(4, 1000)
		p := mustCompute(t, Input{Nodes: nodes, Model: small})
		wantLayout(t, p, nodes, `
node-00: e0 e4
node-01: e1 e5
node-02: e2 e6
node-03: e3 e7
`)
	})
	t.Run("3 equal nodes", func(t *testing.T) {
		nodes := equalNodes(3, 300)
		p := mustCompute(t, Input{Nodes: nodes, Model: small})
		wantLayout(t, p, nodes, `
node-00: e0 e3 e6
node-01: e1 e4 e7
node-02: e2 e5
`)
	})
	t.Run("capacities 1:1:2", func(t *testing.T) {
		nodes := nodesWith(400, 400, 800)
		p := mustCompute(t, Input{Nodes: nodes, Model: small})
		var got []int64
		for _, n := range nodes {
			got = append(got, p.BytesOn(n.ID))
		}
		wantEqual(t, "bytes per node", got, []int64{200, 200, 400})
	})
	t.Run("capacities 1:2:3:4", func(t *testing.T) {
		// 8 experts, 10 capacity units: shares 0.8, 1.6, 2.4, 3.2 experts.
		nodes := nodesWith(1000, 2000, 3000, 4000)
		p := mustCompute(t, Input{Nodes: nodes, Model: small})
		var got []int64
		for _, n := range nodes {
			got = append(got, p.BytesOn(n.ID)/small.ExpertBytes())
		}
		wantEqual(t, "experts per node", got, []int64{1, 2, 2, 3})
	})
	t.Run("a node too small to matter", func(t *testing.T) {
		nodes := nodesWith(400, 400, 5) // 5 bytes: not even one layer
		p := mustCompute(t, Input{Nodes: nodes, Model: small})
		wantLayout(t, p, nodes, `
node-00: e0 e2 e4 e6
node-01: e1 e3 e5 e7
node-02: 
`)
	})
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Input
		want error
	}{
		{"no nodes", Input{Model: small}, ErrNoNodes},
		{"all draining", Input{Model: small, Nodes: []Node{{ID: "a", CapacityBytes: 1000, Draining: true}}}, ErrNoNodes},
		{"replicas above nodes", Input{Model: small, Nodes: equalNodes(2, 1000), Options: Options{MinReplicas: 3}}, ErrTooFewNodes},
		{"replicas above schedulable nodes", Input{Model: small, Options: Options{MinReplicas: 2},
			Nodes: []Node{{ID: "a", CapacityBytes: 1000}, {ID: "b", CapacityBytes: 1000, Draining: true}}}, ErrTooFewNodes},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compute(tc.in)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestInsufficientCapacity(t *testing.T) {
	for _, tc := range []struct {
		name       string
		nodes      []Node
		model      Model
		replicas   int
		need, have int64
	}{
		{"6 of 8 experts fit", equalNodes(3, 200), small, 1, 800, 600},
		{"whole layers only", equalNodes(8, 99), small, 1, 800, 8 * 90},
		{"two replicas", equalNodes(4, 300), small, 2, 1600, 1200},
		// A second copy on the same node is no replica: the big node counts
		// for one copy of each layer only.
		{"one copy per node", nodesWith(10000, 100), small, 2, 1600, 900},
		{"draining nodes do not count", append(equalNodes(3, 200), Node{ID: "x", CapacityBytes: 1000, Draining: true}), small, 1, 800, 600},
		{"exactly enough", equalNodes(4, 200), small, 1, 800, 800},
		// Mixtral-8x7B needs 84 GiB; 8 nodes of 10 GB hold 28 layers each.
		{"mixtral on 8x10GB", equalNodes(8, 10e9), mixtral, 1, 8 * 32 * mixtral.BytesPerExpertLayer, 8 * 28 * mixtral.BytesPerExpertLayer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Compute(Input{Nodes: tc.nodes, Model: tc.model, Options: Options{MinReplicas: tc.replicas}})
			if tc.need <= tc.have {
				if err != nil {
					t.Fatalf("Compute: %v", err)
				}
				checkInvariants(t, Input{Nodes: tc.nodes, Model: tc.model, Options: Options{MinReplicas: tc.replicas}}, p)
				return
			}
			var ice *InsufficientCapacityError
			if !errors.As(err, &ice) {
				t.Fatalf("err = %v, want *InsufficientCapacityError", err)
			}
			wantEqual(t, "error", *ice, InsufficientCapacityError{Need: tc.need, Have: tc.have})
			if want := fmt.Sprintf("insufficient capacity: need %d", tc.need); !strings.Contains(err.Error(), want) {
				t.Errorf("message %q lacks %q", err, want)
			}
			if want := fmt.Sprintf(", have %d", tc.have); !strings.Contains(err.Error(), want) {
				t.Errorf("message %q lacks %q", err, want)
			}
			if len(p.Assignments) != 0 {
				t.Errorf("partial placement returned with the error: %+v", p)
			}
		})
	}
}

func TestInsufficientCapacityMessage(t *testing.T) {
	err := &InsufficientCapacityError{Need: 90194313216, Have: 78920024064}
	want := "placement: insufficient capacity: need 90194313216 (84.0 GiB), have 78920024064 (73.5 GiB)"
	if err.Error() != want {
		t.Errorf("Error() = %q, want %q", err.Error(), want)
	}
}

// Rule 3: surplus nodes get extra replicas, hottest experts first.
func TestExtraReplicas(t *testing.T) {
	t.Run("uniform load", func(t *testing.T) {
		nodes := equalNodes(10, 100)
		p := mustCompute(t, Input{Nodes: nodes, Model: small})
		wantLayout(t, p, nodes, `
node-00: e0
node-01: e1
node-02: e2
node-03: e3
node-04: e4
node-05: e5
node-06: e6
node-07: e7
node-08: e0
node-09: e1
`)
	})
	t.Run("hottest first", func(t *testing.T) {
		nodes := equalNodes(10, 100)
		// e5 gets the first extra (9 per replica), then e2 (5 > 9/2).
		p := mustCompute(t, Input{Nodes: nodes, Model: small, Load: []float64{1, 1, 5, 1, 1, 9, 1, 1}})
		wantEqual(t, "node-08", p.ShardsOf("node-08"), []Shard{{Expert: 5, First: 0, End: 10}})
		wantEqual(t, "node-09", p.ShardsOf("node-09"), []Shard{{Expert: 2, First: 0, End: 10}})
	})
	t.Run("24 nodes uniform", func(t *testing.T) {
		nodes := equalNodes(24, 80e9)
		p := mustCompute(t, Input{Nodes: nodes, Model: mixtral})
		wantEqual(t, "replicas", replicaCounts(p), []int{3, 3, 3, 3, 3, 3, 3, 3})
		for _, n := range nodes {
			if got := len(p.ShardsOf(n.ID)); got != 1 {
				t.Errorf("%s holds %d shards, want 1", n.ID, got)
			}
		}
	})
	t.Run("24 nodes skewed", func(t *testing.T) {
		load := []float64{40, 20, 10, 5, 5, 5, 5, 10}
		p := mustCompute(t, Input{Nodes: equalNodes(24, 80e9), Model: mixtral, Load: load})
		// EPLB: 16 extra replicas, each to the highest load per replica.
		// After 40/8 = 20/4 = 10/2 = 5/1 = 5 (20 replicas), ties go to the
		// lower expert: e0, e1, e2, e3.
		wantEqual(t, "replicas", replicaCounts(p), []int{9, 5, 3, 2, 1, 1, 1, 2})
	})
	t.Run("MaxReplicas caps extras", func(t *testing.T) {
		nodes := equalNodes(24, 80e9)
		p := mustCompute(t, Input{Nodes: nodes, Model: mixtral, Load: []float64{40, 20, 10, 5, 5, 5, 5, 10}, Options: Options{MaxReplicas: 2}})
		wantEqual(t, "replicas", replicaCounts(p), []int{2, 2, 2, 2, 2, 2, 2, 2})
		if got := len(p.Nodes()); got != 16 {
			t.Errorf("%d nodes used, want 16", got)
		}
	})
	t.Run("zero load", func(t *testing.T) {
		// An expert nobody routes to keeps its MinReplicas and no more.
		p := mustCompute(t, Input{Nodes: equalNodes(12, 100), Model: small, Load: []float64{0, 0, 0, 0, 0, 0, 3, 1}})
		wantEqual(t, "replicas", replicaCounts(p), []int{1, 1, 1, 1, 1, 1, 4, 2})
	})
	t.Run("only nodes with room get extras", func(t *testing.T) {
		nodes := append(equalNodes(8, 100), Node{ID: "node-08", CapacityBytes: 50}, Node{ID: "node-09", CapacityBytes: 99})
		p := mustCompute(t, Input{Nodes: nodes, Model: small})
		wantEqual(t, "replicas", replicaCounts(p), []int{1, 1, 1, 1, 1, 1, 1, 1})
	})
	t.Run("no extras while experts share nodes", func(t *testing.T) {
		// 4 nodes with room for 7 experts each: exactly one copy, spread.
		p := mustCompute(t, Input{Nodes: equalNodes(4, 80e9), Model: mixtral})
		wantEqual(t, "replicas", replicaCounts(p), []int{1, 1, 1, 1, 1, 1, 1, 1})
	})
}

// Rule 4: MinReplicas copies on distinct nodes; losing MinReplicas-1 nodes
// loses no expert.
func TestMinReplicas(t *testing.T) {
	t.Run("8 nodes, 2 replicas: a ring", func(t *testing.T) {
		nodes := equalNodes(8, 80e9)
		p := mustCompute(t, Input{Nodes: nodes, Model: mixtral, Options: Options{MinReplicas: 2}})
		wantLayout(t, p, nodes, `
node-00: e0 e7
node-01: e0 e1
node-02: e1 e2
node-03: e2 e3
node-04: e3 e4
node-05: e4 e5
node-06: e5 e6
node-07: e6 e7
`)
		checkSurvivesLoss(t, p, nodes, 1)
	})
	for _, tc := range []struct{ nodes, replicas int }{{8, 3}, {4, 2}, {5, 2}, {3, 3}, {16, 2}} {
		t.Run(fmt.Sprintf("%d nodes, %d replicas", tc.nodes, tc.replicas), func(t *testing.T) {
			nodes := equalNodes(tc.nodes, 100e9)
			p := mustCompute(t, Input{Nodes: nodes, Model: mixtral, Options: Options{MinReplicas: tc.replicas}})
			checkSurvivesLoss(t, p, nodes, tc.replicas-1)
			for _, n := range nodes {
				shards := p.ShardsOf(n.ID)
				if len(shards) == 0 {
					t.Errorf("%s holds nothing", n.ID)
				}
			}
		})
	}
	t.Run("split shards, 2 replicas", func(t *testing.T) {
		nodes := equalNodes(12, 150) // 1.5 experts each: halves
		p := mustCompute(t, Input{Nodes: nodes, Model: small, Options: Options{MinReplicas: 2}})
		if got := len(p.Assignments); got != 16 {
			t.Errorf("%d shards, want 16 halves", got)
		}
		checkSurvivesLoss(t, p, nodes, 1)
	})
}

// checkSurvivesLoss checks that every expert layer keeps a holder whichever
// `lost` nodes fail.
func checkSurvivesLoss(t *testing.T, p Placement, nodes []Node, lost int) {
	t.Helper()
	var rec func(from int, dead []string)
	rec = func(from int, dead []string) {
		if len(dead) == lost {
			for e := range p.Model.Experts {
				for l := range p.Model.Layers {
					alive := slices.DeleteFunc(p.HoldersOf(e, l), func(id string) bool { return slices.Contains(dead, id) })
					if len(alive) == 0 {
						t.Fatalf("losing %v loses expert %d layer %d", dead, e, l)
					}
				}
			}
			return
		}
		for i := from; i < len(nodes); i++ {
			rec(i+1, append(dead, nodes[i].ID))
		}
	}
	rec(0, nil)
}

// Rule 5: nodes too small for whole experts get contiguous layer ranges.
func TestSplitLayers(t *testing.T) {
	t.Run("halves", func(t *testing.T) {
		m := Model{Experts: 2, Layers: 4, BytesPerExpertLayer: 10}
		nodes := equalNodes(4, 20)
		p := mustCompute(t, Input{Nodes: nodes, Model: m})
		wantLayout(t, p, nodes, `
node-00: e0[0,2)
node-01: e0[2,4)
node-02: e1[0,2)
node-03: e1[2,4)
`)
	})
	t.Run("uneven ranges, longer first", func(t *testing.T) {
		m := Model{Experts: 2, Layers: 5, BytesPerExpertLayer: 10}
		nodes := equalNodes(4, 30)
		p := mustCompute(t, Input{Nodes: nodes, Model: m})
		wantLayout(t, p, nodes, `
node-00: e0[0,3)
node-01: e1[0,3)
node-02: e0[3,5)
node-03: e1[3,5)
`)
	})
	t.Run("big enough cluster keeps whole experts", func(t *testing.T) {
		p := mustCompute(t, Input{Nodes: equalNodes(3, 300), Model: small})
		if got := len(p.Assignments); got != 8 {
			t.Errorf("%d shards, want 8 whole experts", got)
		}
	})
	t.Run("packing forces a split although each node fits an expert", func(t *testing.T) {
		// 3 nodes of 2.9 experts: whole experts fit only 6, thirds fit all.
		m := Model{Experts: 8, Layers: 32, BytesPerExpertLayer: 10}
		nodes := equalNodes(3, 2*320+9*32)
		p := mustCompute(t, Input{Nodes: nodes, Model: m})
		if got := len(p.Assignments); got != 24 {
			t.Errorf("%d shards, want 8 experts x 3 ranges", got)
		}
	})
	t.Run("mixtral 16x10GB: halves", func(t *testing.T) {
		nodes := equalNodes(16, 10e9)
		p := mustCompute(t, Input{Nodes: nodes, Model: mixtral})
		for i, n := range nodes {
			want := []Shard{{Expert: i / 2, First: 16 * (i % 2), End: 16 * (i%2 + 1)}}
			wantEqual(t, n.ID, p.ShardsOf(n.ID), want)
		}
	})
	t.Run("mixtral 12x10GB: thirds", func(t *testing.T) {
		nodes := equalNodes(12, 10e9)
		p := mustCompute(t, Input{Nodes: nodes, Model: mixtral})
		wantEqual(t, "expert 0", p.ShardsOf(p.HoldersOf(0, 0)[0])[0], Shard{Expert: 0, First: 0, End: 11})
		if got := len(p.Assignments); got != 24 {
			t.Errorf("%d shards, want 8 experts x 3 ranges", got)
		}
		for _, n := range nodes {
			if got := len(p.ShardsOf(n.ID)); got != 2 {
				t.Errorf("%s holds %d shards, want 2", n.ID, got)
			}
		}
	})
	t.Run("single layers when nothing coarser fits", func(t *testing.T) {
		m := Model{Experts: 2, Layers: 3, BytesPerExpertLayer: 10}
		p := mustCompute(t, Input{Nodes: equalNodes(6, 10), Model: m})
		if got := len(p.Assignments); got != 6 {
			t.Errorf("%d shards, want 6 single layers", got)
		}
	})
}

// Rule 6: with a previous placement, only what must move moves.
func TestStability(t *testing.T) {
	type step struct {
		name      string
		nodes     []Node
		model     Model
		opts      Options
		change    func([]Node) []Node
		maxMoves  int
		exactMove bool // moves must equal maxMoves
	}
	drain := func(id string) func([]Node) []Node {
		return func(nodes []Node) []Node {
			out := slices.Clone(nodes)
			for i := range out {
				if out[i].ID == id {
					out[i].Draining = true
				}
			}
			return out
		}
	}
	remove := func(id string) func([]Node) []Node { return func(n []Node) []Node { return without(n, id) } }
	add := func(n Node) func([]Node) []Node {
		return func(nodes []Node) []Node { return append(slices.Clone(nodes), n) }
	}
	for _, tc := range []step{
		{"8 nodes, one leaves", equalNodes(8, 80e9), mixtral, Options{}, remove("node-03"), 1, true},
		{"8 nodes, one drains", equalNodes(8, 80e9), mixtral, Options{}, drain("node-05"), 1, true},
		{"4 nodes, one leaves", equalNodes(4, 80e9), mixtral, Options{}, remove("node-01"), 2, true},
		{"8 nodes x2, one leaves", equalNodes(8, 80e9), mixtral, Options{MinReplicas: 2}, remove("node-04"), 2, true},
		{"10 nodes with extras, one leaves", equalNodes(10, 80e9), mixtral, Options{}, remove("node-02"), 1, true},
		{"24 nodes, one leaves", equalNodes(24, 80e9), mixtral, Options{}, remove("node-00"), 0, true},
		{"18 nodes, halves and extras, one leaves", equalNodes(18, 10e9), mixtral, Options{}, remove("node-07"), 1, true},
		// Joins: the new node takes up to its fair share, ceil(replicas/nodes);
		// with 8 nodes and 8 experts it gets an extra replica instead.
		{"8 nodes, one joins", equalNodes(8, 80e9), mixtral, Options{}, add(Node{ID: "node-08", CapacityBytes: 80e9}), 1, true},
		{"4 nodes, one joins", equalNodes(4, 80e9), mixtral, Options{}, add(Node{ID: "node-04", CapacityBytes: 80e9}), 1, true},
		{"5 nodes, one joins", equalNodes(5, 80e9), mixtral, Options{}, add(Node{ID: "node-05", CapacityBytes: 80e9}), 1, true},
		{"7 nodes x2, one joins", equalNodes(7, 80e9), mixtral, Options{MinReplicas: 2}, add(Node{ID: "node-07", CapacityBytes: 80e9}), 2, true},
		{"3 nodes x3, one joins", equalNodes(3, 100e9), mixtral, Options{MinReplicas: 3}, add(Node{ID: "node-03", CapacityBytes: 100e9}), 6, true},
		// Its fair share is ceil(8 * 4000/4800) = 7 experts.
		{"2 nodes, a big one joins", equalNodes(2, 400), small, Options{}, add(Node{ID: "node-02", CapacityBytes: 4000}), 7, false},
		{"joining node too small", equalNodes(4, 80e9), mixtral, Options{}, add(Node{ID: "node-04", CapacityBytes: 1e9}), 0, true},
		{"capacity shrinks", equalNodes(4, 400), small, Options{}, func(n []Node) []Node {
			n = slices.Clone(n)
			n[1].CapacityBytes = 100
			return n
		}, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := mustCompute(t, Input{Nodes: tc.nodes, Model: tc.model, Options: tc.opts})
			nodes := tc.change(tc.nodes)
			in := Input{Nodes: nodes, Model: tc.model, Options: tc.opts, Previous: &before}
			after := mustCompute(t, in)
			moves := Moves(before, after)
			if moves > tc.maxMoves || tc.exactMove && moves != tc.maxMoves {
				t.Errorf("%d moves, want %s%d\nbefore:\n%safter:\n%s", moves,
					map[bool]string{true: "", false: "at most "}[tc.exactMove], tc.maxMoves,
					layout(before, tc.nodes), layout(after, nodes))
			}
			// Every replica on a node that stayed, and that still has room for
			// what it held, is kept.
			for _, n := range nodes {
				held := before.ShardsOf(n.ID)
				var old int64
				for _, s := range held {
					old += tc.model.ShardBytes(s)
				}
				if n.Draining || old > n.CapacityBytes {
					continue
				}
				now := after.ShardsOf(n.ID)
				kept := 0
				for _, s := range held {
					if slices.Contains(now, s) {
						kept++
					}
				}
				// Rebalancing may take shards off a node only towards a
				// joining one, and at most maxMoves of them in all.
				if len(held)-kept > tc.maxMoves {
					t.Errorf("%s lost %d of its shards", n.ID, len(held)-kept)
				}
			}
			// Computing again changes nothing.
			again := mustCompute(t, Input{Nodes: nodes, Model: tc.model, Options: tc.opts, Previous: &after})
			wantEqual(t, "recomputed placement", again, after)
		})
	}
}

func TestStabilityLeaveMovesOnlyItsShards(t *testing.T) {
	for _, n := range []int{2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 24} {
		for r := 1; r <= 3 && r < n; r++ {
			nodes := equalNodes(n, 200e9)
			before := mustCompute(t, Input{Nodes: nodes, Model: mixtral, Options: Options{MinReplicas: r}})
			for _, gone := range nodes {
				rest := without(nodes, gone.ID)
				after := mustCompute(t, Input{Nodes: rest, Model: mixtral, Options: Options{MinReplicas: r}, Previous: &before})
				// Every surviving replica stays where it was, unless the smaller
				// cluster has fewer extra replicas to keep.
				lost := len(before.ShardsOf(gone.ID))
				if moves := Moves(before, after); moves > lost {
					t.Errorf("%d nodes x%d, %s leaves: %d moves, it held %d shards\nbefore:\n%safter:\n%s",
						n, r, gone.ID, moves, lost, layout(before, nodes), layout(after, rest))
				}
				if n <= len(before.Assignments)*r {
					// No extras: exactly the departed node's shards move, the
					// rest is untouched.
					for _, nd := range rest {
						now := after.ShardsOf(nd.ID)
						for _, s := range before.ShardsOf(nd.ID) {
							if !slices.Contains(now, s) {
								t.Errorf("%d nodes x%d, %s leaves: %s lost %v", n, r, gone.ID, nd.ID, s)
							}
						}
					}
				}
			}
		}
	}
}

func TestStabilityJoinBound(t *testing.T) {
	for n := 1; n <= 24; n++ {
		for r := 1; r <= 3 && r <= n; r++ {
			nodes := equalNodes(n, 200e9)
			before := mustCompute(t, Input{Nodes: nodes, Model: mixtral, Options: Options{MinReplicas: r}})
			joined := append(slices.Clone(nodes), Node{ID: "node-99", CapacityBytes: 200e9})
			after := mustCompute(t, Input{Nodes: joined, Model: mixtral, Options: Options{MinReplicas: r}, Previous: &before})
			replicas := 0
			for _, c := range replicaCounts(after) {
				replicas += c
			}
			bound := (replicas + len(joined) - 1) / len(joined)
			if moves := Moves(before, after); moves > bound {
				t.Errorf("%d nodes x%d + 1: %d moves, want at most %d", n, r, moves, bound)
			}
			if len(after.ShardsOf("node-99")) == 0 {
				t.Errorf("%d nodes x%d + 1: the new node holds nothing\n%s", n, r, layout(after, joined))
			}
		}
	}
}

func TestStabilityLoad(t *testing.T) {
	nodes := equalNodes(12, 80e9)
	base := []float64{8, 4, 2, 2, 1, 1, 1, 1}
	before := mustCompute(t, Input{Nodes: nodes, Model: mixtral, Load: base})
	wantEqual(t, "replicas", replicaCounts(before), []int{4, 2, 1, 1, 1, 1, 1, 1})

	// Within the tolerance: nothing moves (the fresh plan would move).
	noisy := []float64{7, 4, 2, 2.5, 1, 1, 1, 1}
	fresh := mustCompute(t, Input{Nodes: nodes, Model: mixtral, Load: noisy})
	wantEqual(t, "fresh replicas", replicaCounts(fresh), []int{3, 2, 1, 2, 1, 1, 1, 1})
	after := mustCompute(t, Input{Nodes: nodes, Model: mixtral, Load: noisy, Previous: &before})
	wantEqual(t, "replicas after noise", replicaCounts(after), replicaCounts(before))
	if m := Moves(before, after); m != 0 {
		t.Errorf("%d moves on noise", m)
	}
	// A tiny tolerance follows the statistics.
	exact := mustCompute(t, Input{Nodes: nodes, Model: mixtral, Load: noisy, Previous: &before, Options: Options{LoadTolerance: 1e-9}})
	wantEqual(t, "replicas, exact", replicaCounts(exact), []int{3, 2, 1, 2, 1, 1, 1, 1})
	if m := Moves(before, exact); m != 1 {
		t.Errorf("%d moves, want 1", m)
	}
	// A real shift beyond the tolerance moves replicas to the hot expert.
	shifted := []float64{1, 1, 1, 1, 1, 1, 1, 8}
	after = mustCompute(t, Input{Nodes: nodes, Model: mixtral, Load: shifted, Previous: &before})
	wantEqual(t, "replicas after shift", replicaCounts(after), []int{1, 1, 1, 1, 1, 1, 1, 5})
	if m := Moves(before, after); m != 4 {
		t.Errorf("%d moves, want 4", m)
	}
}

func TestStabilityGranularity(t *testing.T) {
	split := mustCompute(t, Input{Nodes: equalNodes(16, 10e9), Model: mixtral})
	if len(split.Assignments) != 16 {
		t.Fatalf("%d shards, want 16 halves", len(split.Assignments))
	}
	// The nodes grow: whole experts would fit, but the halves stay.
	big := equalNodes(16, 80e9)
	after := mustCompute(t, Input{Nodes: big, Model: mixtral, Previous: &split})
	if m := Moves(split, after); m != 0 {
		t.Errorf("%d moves, want 0 (halves kept)", m)
	}
	// A plan without history re-derives whole experts.
	fresh := mustCompute(t, Input{Nodes: big, Model: mixtral})
	if len(fresh.Assignments) != 8 {
		t.Errorf("%d shards, want 8 whole experts", len(fresh.Assignments))
	}
	// Shrinking below what the halves need splits further.
	tiny := mustCompute(t, Input{Nodes: equalNodes(12, 10e9), Model: mixtral, Previous: &split})
	if len(tiny.Assignments) != 24 {
		t.Errorf("%d shards, want 24 thirds", len(tiny.Assignments))
	}
	// A previous placement of another model is ignored.
	other := mixtral
	other.Layers = 16
	_, err := Compute(Input{Nodes: big, Model: other, Previous: &split})
	if err != nil {
		t.Fatal(err)
	}
}

// Rule 7: same inputs, in any order, give the same placement.
func TestDeterminism(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	nodes := nodesWith(80e9, 40e9, 40e9, 120e9, 10e9, 80e9, 60e9, 25e9, 25e9, 33e9)
	nodes[3].Draining = true
	load := []float64{3, 1, 4, 1, 5, 9, 2, 6}
	for _, opts := range []Options{{}, {MinReplicas: 2}, {MinReplicas: 3, MaxReplicas: 4}} {
		want := mustCompute(t, Input{Nodes: nodes, Model: mixtral, Load: load, Options: opts})
		prevNodes := without(nodes, "node-06")
		prev := mustCompute(t, Input{Nodes: prevNodes, Model: mixtral, Load: load, Options: opts})
		wantNext := mustCompute(t, Input{Nodes: nodes, Model: mixtral, Load: load, Options: opts, Previous: &prev})
		for range 50 {
			shuffled := slices.Clone(nodes)
			rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			got := mustCompute(t, Input{Nodes: shuffled, Model: mixtral, Load: load, Options: opts})
			wantEqual(t, "placement after shuffling nodes", got, want)

			// The previous placement's order does not matter either.
			p2 := prev
			p2.Assignments = slices.Clone(prev.Assignments)
			rng.Shuffle(len(p2.Assignments), func(i, j int) { p2.Assignments[i], p2.Assignments[j] = p2.Assignments[j], p2.Assignments[i] })
			for i := range p2.Assignments {
				ns := slices.Clone(p2.Assignments[i].Nodes)
				rng.Shuffle(len(ns), func(a, b int) { ns[a], ns[b] = ns[b], ns[a] })
				p2.Assignments[i].Nodes = ns
			}
			got = mustCompute(t, Input{Nodes: shuffled, Model: mixtral, Load: load, Options: opts, Previous: &p2})
			wantEqual(t, "placement after shuffling previous", got, wantNext)
		}
	}
}

func TestInvalidInput(t *testing.T) {
	ok := equalNodes(8, 1000)
	for _, tc := range []struct {
		name string
		in   Input
		want string
	}{
		{"duplicate ID", Input{Model: small, Nodes: append(slices.Clone(ok), Node{ID: "node-03", CapacityBytes: 5})}, `duplicate node ID "node-03"`},
		{"duplicate draining ID", Input{Model: small, Nodes: append(slices.Clone(ok), Node{ID: "node-03", Draining: true})}, `duplicate node ID "node-03"`},
		{"empty ID", Input{Model: small, Nodes: []Node{{CapacityBytes: 5}}}, "empty ID"},
		{"negative capacity", Input{Model: small, Nodes: []Node{{ID: "a", CapacityBytes: -1}}}, `node "a": negative capacity -1`},
		{"zero experts", Input{Model: Model{Layers: 1, BytesPerExpertLayer: 1}, Nodes: ok}, "experts 0"},
		{"zero layers", Input{Model: Model{Experts: 1, BytesPerExpertLayer: 1}, Nodes: ok}, "layers 0"},
		{"zero bytes", Input{Model: Model{Experts: 1, Layers: 1}, Nodes: ok}, "bytes per expert layer 0"},
		{"too many experts", Input{Model: Model{Experts: MaxExperts + 1, Layers: 1, BytesPerExpertLayer: 1}, Nodes: ok}, "experts 4097"},
		{"model too big", Input{Model: Model{Experts: 8, Layers: 32, BytesPerExpertLayer: 1 << 45}, Nodes: ok}, "exceeds"},
		{"load too short", Input{Model: small, Nodes: ok, Load: []float64{1, 2}}, "load has 2 values for 8 experts"},
		{"negative load", Input{Model: small, Nodes: ok, Load: []float64{1, 1, 1, -1, 1, 1, 1, 1}}, "load of expert 3 is -1"},
		{"NaN load", Input{Model: small, Nodes: ok, Load: []float64{1, 1, 1, math.NaN(), 1, 1, 1, 1}}, "load of expert 3 is NaN"},
		{"infinite load", Input{Model: small, Nodes: ok, Load: []float64{1, 1, 1, math.Inf(1), 1, 1, 1, 1}}, "load of expert 3 is +Inf"},
		{"negative MinReplicas", Input{Model: small, Nodes: ok, Options: Options{MinReplicas: -1}}, "MinReplicas -1"},
		{"MaxReplicas below MinReplicas", Input{Model: small, Nodes: ok, Options: Options{MinReplicas: 3, MaxReplicas: 2}}, "MaxReplicas 2 below MinReplicas 3"},
		{"MaxReplicas below default MinReplicas", Input{Model: small, Nodes: ok, Options: Options{MaxReplicas: -1}}, "MaxReplicas -1"},
		{"negative tolerance", Input{Model: small, Nodes: ok, Options: Options{LoadTolerance: -0.5}}, "LoadTolerance -0.5"},
		{"too many nodes", Input{Model: small, Nodes: equalNodes(MaxNodes+1, 1)}, "4097 nodes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Compute(tc.in)
			if !errors.Is(err, ErrInvalidInput) {
				t.Fatalf("err = %v, want ErrInvalidInput", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %q, want it to mention %q", err, tc.want)
			}
			if len(p.Assignments) != 0 {
				t.Errorf("placement returned with the error")
			}
		})
	}
}

// When the cluster shrinks below what the previous granularity needs, nodes
// keep the finer shards lying inside what they held: they already have those
// weights.
func TestFinerGranularityKeepsContainedShards(t *testing.T) {
	nodes := equalNodes(16, 10e9)
	halves := mustCompute(t, Input{Nodes: nodes, Model: mixtral})
	rest := nodes[:12]
	thirds := mustCompute(t, Input{Nodes: rest, Model: mixtral, Previous: &halves})
	if got := len(thirds.Assignments); got != 24 {
		t.Fatalf("%d shards, want 24 thirds", got)
	}
	kept := 0
	for _, n := range rest {
		for _, s := range thirds.ShardsOf(n.ID) {
			for _, h := range halves.ShardsOf(n.ID) {
				if h.Expert == s.Expert && h.First <= s.First && s.End <= h.End {
					kept++
				}
			}
		}
	}
	// Each of the 12 nodes held a half, which contains one third ([0,11) in
	// [0,16) or [22,32) in [16,32)); at least as many of those stay.
	if kept < 12 {
		t.Errorf("%d thirds stayed inside the half their node held, want 12\nbefore:\n%safter:\n%s",
			kept, layout(halves, nodes), layout(thirds, rest))
	}
}

// A previous placement is data from etcd: whatever it holds, Compute returns
// a valid placement and uses only what applies.
func TestGarbagePrevious(t *testing.T) {
	nodes := equalNodes(8, 200)
	prev := &Placement{Model: small, Assignments: []Assignment{
		{Shard: Shard{Expert: 0, First: 0, End: 10}, Nodes: []string{"node-00", "node-00", "gone", ""}},
		{Shard: Shard{Expert: 0, First: 0, End: 10}, Nodes: []string{"node-01"}},  // duplicate shard
		{Shard: Shard{Expert: 0, First: 3, End: 7}, Nodes: []string{"node-02"}},   // irregular range
		{Shard: Shard{Expert: 9, First: 0, End: 10}, Nodes: []string{"node-03"}},  // no such expert
		{Shard: Shard{Expert: -1, First: 0, End: 10}, Nodes: []string{"node-03"}}, // no such expert
		{Shard: Shard{Expert: 1, First: -5, End: 99}, Nodes: []string{"node-04"}}, // out of range
		{Shard: Shard{Expert: 2, First: 0, End: 10}, Nodes: nil},                  // no nodes
		{Shard: Shard{Expert: 3, First: 0, End: 10}, Nodes: []string{"node-05"}},  // fine
		{Shard: Shard{Expert: 3, First: 10, End: 10}, Nodes: []string{"node-06"}}, // empty range
		{Shard: Shard{Expert: 4, First: 0, End: 10}, Nodes: []string{"node-07"}},  // fine
		{Shard: Shard{Expert: 4, First: 0, End: 10}, Nodes: []string{"node-07"}},  // again
	}}
	in := Input{Nodes: nodes, Model: small, Previous: prev}
	p := mustCompute(t, in)
	for _, want := range []struct {
		node  string
		shard Shard
	}{{"node-00", Shard{Expert: 0, First: 0, End: 10}}, {"node-05", Shard{Expert: 3, First: 0, End: 10}}, {"node-07", Shard{Expert: 4, First: 0, End: 10}}} {
		if !slices.Contains(p.ShardsOf(want.node), want.shard) {
			t.Errorf("%s lost %v\n%s", want.node, want.shard, layout(p, nodes))
		}
	}
	// The same garbage in another order gives the same result.
	rev := *prev
	rev.Assignments = slices.Clone(prev.Assignments)
	slices.Reverse(rev.Assignments)
	wantEqual(t, "reversed previous", mustCompute(t, Input{Nodes: nodes, Model: small, Previous: &rev}), p)
}

func TestDrainingNodeEmpties(t *testing.T) {
	nodes := equalNodes(8, 80e9)
	before := mustCompute(t, Input{Nodes: nodes, Model: mixtral, Options: Options{MinReplicas: 2}})
	nodes[2].Draining = true
	after := mustCompute(t, Input{Nodes: nodes, Model: mixtral, Options: Options{MinReplicas: 2}, Previous: &before})
	if s := after.ShardsOf("node-02"); len(s) != 0 {
		t.Errorf("draining node holds %v", s)
	}
	if m := Moves(before, after); m != 2 {
		t.Errorf("%d moves, want the 2 replicas node-02 held", m)
	}
}
