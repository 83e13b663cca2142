package placement

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func wantEqual(t *testing.T, what string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

// mixtral is Mixtral-8x7B's expert shape in bf16: w1, w2, w3 of 4096x14336.
var mixtral = Model{Experts: 8, Layers: 32, BytesPerExpertLayer: 3 * 4096 * 14336 * 2}

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
