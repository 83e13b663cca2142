package placement

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	record "github.com/moegrid/moegrid/placement"
)

// mixtral is Mixtral-8x7B's expert shape in bf16: w1, w2, w3 of 4096x14336.
var mixtral = Model{Experts: 8, Layers: 32, BytesPerExpertLayer: 3 * 4096 * 14336 * 2}

// small is a toy model whose expert is 100 bytes (10 layers of 10 bytes).
var small = Model{Experts: 8, Layers: 10, BytesPerExpertLayer: 10}

func nodeID(i int) string { return fmt.Sprintf("node-%02d", i) }

// equalNodes returns n nodes node-00... with the same capacity.
func equalNodes(n int, capacity int64) []Node {
	nodes := make([]Node, n)
	for i := range nodes {
		nodes[i] = Node{ID: nodeID(i), CapacityBytes: capacity}
	}
	return nodes
}

// nodesWith returns nodes node-00... with the given capacities.
func nodesWith(caps ...int64) []Node {
	nodes := make([]Node, len(caps))
	for i, c := range caps {
		nodes[i] = Node{ID: nodeID(i), CapacityBytes: c}
	}
	return nodes
}

func without(nodes []Node, id string) []Node {
	return slices.DeleteFunc(slices.Clone(nodes), func(n Node) bool { return n.ID == id })
}

func mustCompute(t testing.TB, in Input) Placement {
	t.Helper()
	p, err := Compute(in)
	if err != nil {
		t.Fatalf("Compute: %v", err)
	}
	checkInvariants(t, in, p)
	return p
}

// layout renders a placement as "node: shard, shard" lines, one per node of
// nodes (empty nodes included), for exact comparisons with readable diffs.
func layout(p Placement, nodes []Node) string {
	var b strings.Builder
	for _, n := range nodes {
		var parts []string
		for _, s := range p.ShardsOf(n.ID) {
			if s.First == 0 && s.End == p.Model.Layers {
				parts = append(parts, fmt.Sprintf("e%d", s.Expert))
			} else {
				parts = append(parts, fmt.Sprintf("e%d[%d,%d)", s.Expert, s.First, s.End))
			}
		}
		fmt.Fprintf(&b, "%s: %s\n", n.ID, strings.Join(parts, " "))
	}
	return b.String()
}

func wantLayout(t *testing.T, p Placement, nodes []Node, want string) {
	t.Helper()
	got := layout(p, nodes)
	want = strings.TrimLeft(want, "\n")
	if got != want {
		t.Errorf("layout:\n%s\nwant:\n%s", got, want)
	}
}

// replicaCounts returns the replica count of every assignment, in order.
func replicaCounts(p Placement) []int {
	out := make([]int, len(p.Assignments))
	for i, a := range p.Assignments {
		out[i] = len(a.Nodes)
	}
	return out
}

// checkInvariants verifies everything a successful Compute promises.
func checkInvariants(t testing.TB, in Input, p Placement) {
	t.Helper()
	if err := p.Validate(in.Model); err != nil {
		t.Fatalf("Validate: %v\n%s", err, layout(p, in.Nodes))
	}
	if p.Version != 0 {
		t.Errorf("Version = %d, want 0", p.Version)
	}
	minR := max(in.Options.MinReplicas, 1)
	byID := make(map[string]Node)
	for _, n := range in.Nodes {
		byID[n.ID] = n
	}
	// Canonical order and a uniform split of every expert.
	k := 0
	for i, a := range p.Assignments {
		if i > 0 && record.CompareShards(p.Assignments[i-1].Shard, a.Shard) >= 0 {
			t.Errorf("assignments out of order at %d: %v after %v", i, a.Shard, p.Assignments[i-1].Shard)
		}
		if !slices.IsSorted(a.Nodes) {
			t.Errorf("%v: nodes not sorted: %v", a.Shard, a.Nodes)
		}
		if len(a.Nodes) < minR {
			t.Errorf("%v: %d replicas, want at least %d", a.Shard, len(a.Nodes), minR)
		}
		if mx := in.Options.MaxReplicas; mx > 0 && len(a.Nodes) > mx {
			t.Errorf("%v: %d replicas, want at most %d", a.Shard, len(a.Nodes), mx)
		}
		for _, id := range a.Nodes {
			n, ok := byID[id]
			if !ok {
				t.Errorf("%v on unknown node %q", a.Shard, id)
			}
			if n.Draining {
				t.Errorf("%v on draining node %q", a.Shard, id)
			}
		}
		if a.Shard.Expert == 0 {
			k++
		}
	}
	if len(p.Assignments) != in.Model.Experts*k {
		t.Errorf("%d assignments, want %d experts x %d ranges", len(p.Assignments), in.Model.Experts, k)
	} else {
		split := splitRanges(in.Model.Layers, k)
		for i, a := range p.Assignments {
			r := split[i%k]
			if a.Shard != (Shard{Expert: i / k, First: r[0], End: r[1]}) {
				t.Errorf("assignment %d is %v, want a uniform split into %d ranges", i, a.Shard, k)
			}
		}
	}
	for _, n := range in.Nodes {
		if used := p.BytesOn(n.ID); used > n.CapacityBytes {
			t.Errorf("node %s holds %d bytes, capacity %d", n.ID, used, n.CapacityBytes)
		}
	}
}

// wantEqual fails if got and want differ.
func wantEqual[T any](t testing.TB, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}
