package placement

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
)

// two experts, 4 layers: e0 whole on a and b, e1 split over b and c.
var sample = Placement{
	Version: 7,
	Model:   Model{Experts: 2, Layers: 4, BytesPerExpertLayer: 10},
	Assignments: []Assignment{
		{Shard: Shard{Expert: 0, First: 0, End: 4}, Nodes: []string{"a", "b"}},
		{Shard: Shard{Expert: 1, First: 0, End: 2}, Nodes: []string{"c"}},
		{Shard: Shard{Expert: 1, First: 2, End: 4}, Nodes: []string{"b"}},
	},
}

func TestPlacementViews(t *testing.T) {
	wantEqual(t, "ShardsOf(b)", sample.ShardsOf("b"), []Shard{{0, 0, 4}, {1, 2, 4}})
	wantEqual(t, "ShardsOf(x)", sample.ShardsOf("x"), []Shard(nil))
	wantEqual(t, "BytesOn(b)", sample.BytesOn("b"), int64(60))
	wantEqual(t, "BytesOn(c)", sample.BytesOn("c"), int64(20))
	wantEqual(t, "BytesOn(x)", sample.BytesOn("x"), int64(0))
	wantEqual(t, "Nodes", sample.Nodes(), []string{"a", "b", "c"})
	for _, tc := range []struct {
		expert, layer int
		want          []string
	}{
		{0, 0, []string{"a", "b"}},
		{0, 3, []string{"a", "b"}},
		{1, 1, []string{"c"}},
		{1, 2, []string{"b"}},
		{1, 4, nil},
		{2, 0, nil},
		{-1, 0, nil},
	} {
		wantEqual(t, "HoldersOf", sample.HoldersOf(tc.expert, tc.layer), tc.want)
	}
	// HoldersOf returns a copy.
	h := sample.HoldersOf(0, 0)
	h[0] = "mutated"
	wantEqual(t, "HoldersOf after mutation", sample.HoldersOf(0, 0), []string{"a", "b"})
}

func TestShardString(t *testing.T) {
	wantEqual(t, "String", Shard{Expert: 3, First: 0, End: 32}.String(), "expert 3 layers 0-31")
	wantEqual(t, "String", Shard{Expert: 0, First: 11, End: 22}.String(), "expert 0 layers 11-21")
	wantEqual(t, "Layers", Shard{Expert: 0, First: 11, End: 22}.Layers(), 11)
}

func TestModelSizes(t *testing.T) {
	wantEqual(t, "ExpertBytes", mixtral.ExpertBytes(), int64(11274289152))
	wantEqual(t, "TotalBytes", mixtral.TotalBytes(), int64(90194313216))
	wantEqual(t, "ShardBytes", mixtral.ShardBytes(Shard{0, 0, 16}), int64(16*352321536))
}

// The JSON form is stored in etcd: its field names must not change.
func TestPlacementJSON(t *testing.T) {
	b, err := json.Marshal(sample)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"version":7,"model":{"experts":2,"layers":4,"bytes_per_expert_layer":10},"assignments":[` +
		`{"shard":{"expert":0,"first_layer":0,"end_layer":4},"nodes":["a","b"]},` +
		`{"shard":{"expert":1,"first_layer":0,"end_layer":2},"nodes":["c"]},` +
		`{"shard":{"expert":1,"first_layer":2,"end_layer":4},"nodes":["b"]}]}`
	if string(b) != want {
		t.Errorf("JSON:\n got %s\nwant %s", b, want)
	}
	var back Placement
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "round trip", back, sample)

	// A computed placement survives the round trip too.
	p := mustCompute(t, Input{Nodes: equalNodes(12, 10e9), Model: mixtral, Options: Options{MinReplicas: 1}})
	b, err = json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	back = Placement{}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "computed round trip", back, p)
}

func TestNodeJSON(t *testing.T) {
	b, err := json.Marshal([]Node{{ID: "a", CapacityBytes: 5}, {ID: "b", CapacityBytes: 6, Draining: true}})
	if err != nil {
		t.Fatal(err)
	}
	want := `[{"id":"a","capacity_bytes":5},{"id":"b","capacity_bytes":6,"draining":true}]`
	if string(b) != want {
		t.Errorf("JSON:\n got %s\nwant %s", b, want)
	}
}

func TestValidate(t *testing.T) {
	if err := sample.Validate(sample.Model); err != nil {
		t.Fatalf("Validate(sample): %v", err)
	}
	with := func(edit func(p *Placement)) Placement {
		p := sample
		p.Assignments = make([]Assignment, len(sample.Assignments))
		for i, a := range sample.Assignments {
			p.Assignments[i] = Assignment{Shard: a.Shard, Nodes: append([]string(nil), a.Nodes...)}
		}
		edit(&p)
		return p
	}
	for _, tc := range []struct {
		name string
		p    Placement
		m    Model
		want string
	}{
		{"other model", sample, Model{Experts: 2, Layers: 5, BytesPerExpertLayer: 10}, "computed for model"},
		{"invalid model", sample, Model{Experts: 0, Layers: 4, BytesPerExpertLayer: 10}, "experts 0"},
		{"expert out of range", with(func(p *Placement) { p.Assignments[1].Shard.Expert = 2 }), sample.Model, "outside the model"},
		{"negative expert", with(func(p *Placement) { p.Assignments[0].Shard.Expert = -1 }), sample.Model, "outside the model"},
		{"empty range", with(func(p *Placement) { p.Assignments[1].Shard.End = 0 }), sample.Model, "outside the model"},
		{"past the last layer", with(func(p *Placement) { p.Assignments[2].Shard.End = 5 }), sample.Model, "outside the model"},
		{"no replica", with(func(p *Placement) { p.Assignments[1].Nodes = nil }), sample.Model, "has no replica"},
		{"empty node ID", with(func(p *Placement) { p.Assignments[1].Nodes = []string{""} }), sample.Model, "empty node ID"},
		{"two replicas on a node", with(func(p *Placement) { p.Assignments[0].Nodes = []string{"b", "a", "b"} }), sample.Model, `two replicas on node "b"`},
		{"overlap", with(func(p *Placement) { p.Assignments[2].Shard.First = 1 }), sample.Model, "overlaps"},
		{"duplicate shard", with(func(p *Placement) {
			p.Assignments = append(p.Assignments, Assignment{Shard: Shard{0, 0, 4}, Nodes: []string{"c"}})
		}), sample.Model, "overlaps"},
		{"gap", with(func(p *Placement) { p.Assignments[1].Shard.End = 1 }), sample.Model, "expert 1 layers 1-1 have no replica"},
		{"missing tail", with(func(p *Placement) { p.Assignments = p.Assignments[:2] }), sample.Model, "expert 1 layers 2-3 have no replica"},
		{"missing expert", with(func(p *Placement) { p.Assignments = p.Assignments[:1] }), sample.Model, "expert 1 layers 0-3 have no replica"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Validate(tc.m)
			if !errors.Is(err, ErrInvalidPlacement) {
				t.Fatalf("err = %v, want ErrInvalidPlacement", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %q, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestMoves(t *testing.T) {
	a := sample
	wantEqual(t, "Moves(a, a)", Moves(a, a), 0)
	wantEqual(t, "Moves(empty, a)", Moves(Placement{}, a), 4)
	wantEqual(t, "Moves(a, empty)", Moves(a, Placement{}), 0)
	b := Placement{Model: a.Model, Assignments: []Assignment{
		{Shard: Shard{0, 0, 4}, Nodes: []string{"a", "d"}}, // d new
		{Shard: Shard{1, 0, 2}, Nodes: []string{"c"}},
		{Shard: Shard{1, 2, 4}, Nodes: []string{"c"}}, // moved from b to c
	}}
	wantEqual(t, "Moves(a, b)", Moves(a, b), 2)
	wantEqual(t, "Moves(b, a)", Moves(b, a), 2)
	// A different split of the same expert on the same node counts: the
	// shard differs.
	c := Placement{Model: a.Model, Assignments: []Assignment{{Shard: Shard{1, 0, 4}, Nodes: []string{"c"}}}}
	wantEqual(t, "Moves(a, c)", Moves(a, c), 1)
}

func TestCompareRatio(t *testing.T) {
	const big = math.MaxInt64
	for _, tc := range []struct {
		a, b, c, d int64
		want       int
	}{
		{1, 2, 1, 2, 0},
		{1, 2, 2, 4, 0},
		{1, 3, 1, 2, -1},
		{2, 3, 1, 2, 1},
		{0, 5, 0, 7, 0},
		{0, 5, 1, big, -1},
		{big, big, big - 1, big - 1, 0},
		{big - 1, big, big - 2, big - 1, 1}, // 1-1/b vs 1-1/(b-1)
		{big / 3, big, 1, 3, -1},            // floor makes it smaller
	} {
		if got := compareRatio(tc.a, tc.b, tc.c, tc.d); got != tc.want {
			t.Errorf("compareRatio(%d/%d, %d/%d) = %d, want %d", tc.a, tc.b, tc.c, tc.d, got, tc.want)
		}
	}
}

func TestSplitRanges(t *testing.T) {
	wantEqual(t, "32/1", splitRanges(32, 1), [][2]int{{0, 32}})
	wantEqual(t, "32/2", splitRanges(32, 2), [][2]int{{0, 16}, {16, 32}})
	wantEqual(t, "32/3", splitRanges(32, 3), [][2]int{{0, 11}, {11, 22}, {22, 32}})
	wantEqual(t, "5/5", splitRanges(5, 5), [][2]int{{0, 1}, {1, 2}, {2, 3}, {3, 4}, {4, 5}})
	for layers := 1; layers <= 64; layers++ {
		for k := 1; k <= layers; k++ {
			r := splitRanges(layers, k)
			if r[0][0] != 0 || r[k-1][1] != layers {
				t.Fatalf("splitRanges(%d, %d) = %v does not cover the layers", layers, k, r)
			}
			for i := range r {
				n := r[i][1] - r[i][0]
				if n < layers/k || n > (layers+k-1)/k || i > 0 && r[i][0] != r[i-1][1] {
					t.Fatalf("splitRanges(%d, %d) = %v", layers, k, r)
				}
			}
		}
	}
}

func TestGranularityOf(t *testing.T) {
	m := Model{Experts: 2, Layers: 32, BytesPerExpertLayer: 1}
	mk := func(shards ...Shard) *Placement {
		p := &Placement{Model: m}
		for _, s := range shards {
			p.Assignments = append(p.Assignments, Assignment{Shard: s, Nodes: []string{"a"}})
		}
		return p
	}
	for _, tc := range []struct {
		name string
		p    *Placement
		want int
	}{
		{"nil", nil, 0},
		{"empty", mk(), 0},
		{"whole", mk(Shard{0, 0, 32}, Shard{1, 0, 32}), 1},
		{"halves", mk(Shard{0, 0, 16}, Shard{0, 16, 32}, Shard{1, 0, 16}), 2},
		{"thirds, partial", mk(Shard{1, 22, 32}), 3},
		{"irregular", mk(Shard{0, 0, 5}, Shard{0, 5, 32}), 0},
		{"expert out of range", mk(Shard{2, 0, 32}), 0},
	} {
		if got := granularityOf(tc.p); got != tc.want {
			t.Errorf("%s: granularityOf = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 80e9: "74.5 GiB", math.MaxInt64: "8.0 EiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
