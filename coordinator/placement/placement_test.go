package placement

import (
	"encoding/json"
	"math"
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
		{"whole", mk(Shard{Expert: 0, First: 0, End: 32}, Shard{Expert: 1, First: 0, End: 32}), 1},
		{"halves", mk(Shard{Expert: 0, First: 0, End: 16}, Shard{Expert: 0, First: 16, End: 32}, Shard{Expert: 1, First: 0, End: 16}), 2},
		{"thirds, partial", mk(Shard{Expert: 1, First: 22, End: 32}), 3},
		{"irregular", mk(Shard{Expert: 0, First: 0, End: 5}, Shard{Expert: 0, First: 5, End: 32}), 0},
		{"expert out of range", mk(Shard{Expert: 2, First: 0, End: 32}), 0},
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
