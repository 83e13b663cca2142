package placement

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
)

// Sanity limits on the input, far above any real Mixture-of-Experts model or
// cluster; they keep every byte sum exact in an int64.
const (
	MaxExperts = 1 << 12 // experts per layer
	MaxLayers  = 1 << 12 // transformer layers
	// MaxModelBytes bounds Experts*Layers*BytesPerExpertLayer (1 PiB).
	MaxModelBytes = 1 << 50
)

// Model is the shape of the model's expert weights.
type Model struct {
	// Experts is the number of experts per MoE layer (8 for Mixtral-8x7B).
	Experts int `json:"experts"`
	// Layers is the number of transformer layers (32 for Mixtral-8x7B).
	Layers int `json:"layers"`
	// BytesPerExpertLayer is the size of one expert's w1, w2 and w3 in one
	// layer, in bytes (3*4096*14336*2 for Mixtral-8x7B in bf16).
	BytesPerExpertLayer int64 `json:"bytes_per_expert_layer"`
}

// ExpertBytes is the size of one expert over all layers, in bytes.
func (m Model) ExpertBytes() int64 { return int64(m.Layers) * m.BytesPerExpertLayer }

// TotalBytes is the size of one copy of every expert, in bytes.
func (m Model) TotalBytes() int64 { return int64(m.Experts) * m.ExpertBytes() }

// ShardBytes is the size of shard s of this model, in bytes.
func (m Model) ShardBytes(s Shard) int64 { return int64(s.Layers()) * m.BytesPerExpertLayer }

// Validate reports whether the model shape is usable (it wraps
// ErrInvalidInput otherwise).
func (m Model) Validate() error {
	switch {
	case m.Experts <= 0 || m.Experts > MaxExperts:
		return invalidf("model: experts %d not in [1, %d]", m.Experts, MaxExperts)
	case m.Layers <= 0 || m.Layers > MaxLayers:
		return invalidf("model: layers %d not in [1, %d]", m.Layers, MaxLayers)
	case m.BytesPerExpertLayer <= 0:
		return invalidf("model: bytes per expert layer %d must be positive", m.BytesPerExpertLayer)
	case m.BytesPerExpertLayer > MaxModelBytes/int64(m.Experts*m.Layers):
		return invalidf("model: %d experts x %d layers x %d bytes exceeds %d bytes",
			m.Experts, m.Layers, m.BytesPerExpertLayer, int64(MaxModelBytes))
	}
	return nil
}

// Shard is one expert over the contiguous layer range [First, End).
type Shard struct {
	Expert int `json:"expert"`
	First  int `json:"first_layer"`
	End    int `json:"end_layer"` // exclusive
}

// Layers is the number of layers the shard covers.
func (s Shard) Layers() int { return s.End - s.First }

// Contains reports whether the shard holds expert weights of layer.
func (s Shard) Contains(layer int) bool { return s.First <= layer && layer < s.End }

// String formats the shard with an inclusive layer range, e.g.
// "expert 3 layers 0-31".
func (s Shard) String() string {
	return fmt.Sprintf("expert %d layers %d-%d", s.Expert, s.First, s.End-1)
}

// CompareShards orders shards by expert, then first layer, then end layer:
// the order of a placement's assignments. It suits slices.SortFunc.
func CompareShards(a, b Shard) int {
	if c := cmp.Compare(a.Expert, b.Expert); c != 0 {
		return c
	}
	if c := cmp.Compare(a.First, b.First); c != 0 {
		return c
	}
	return cmp.Compare(a.End, b.End)
}

// Assignment lists the nodes that hold a replica of one shard.
type Assignment struct {
	Shard Shard `json:"shard"`
	// Nodes holds the IDs of the replicas' nodes, sorted, distinct.
	Nodes []string `json:"nodes"`
}

// Placement is the cluster-wide assignment of shards to nodes. It is stored
// in etcd as JSON; the field names are part of the storage format.
type Placement struct {
	// Version is set by the controller when it stores the placement; the
	// planner leaves it zero.
	Version int64 `json:"version"`
	// Model is the model shape the placement was computed for.
	Model Model `json:"model"`
	// Assignments are sorted by expert, then first layer; each shard appears
	// once.
	Assignments []Assignment `json:"assignments"`
}

// ShardsOf returns the shards that node holds, in assignment order.
func (p Placement) ShardsOf(node string) []Shard {
	var out []Shard
	for _, a := range p.Assignments {
		if slices.Contains(a.Nodes, node) {
			out = append(out, a.Shard)
		}
	}
	return out
}

// BytesOn returns the bytes of expert weights that node holds.
func (p Placement) BytesOn(node string) int64 {
	var n int64
	for _, s := range p.ShardsOf(node) {
		n += p.Model.ShardBytes(s)
	}
	return n
}

// Nodes returns the IDs of every node that holds at least one shard, sorted.
func (p Placement) Nodes() []string {
	var out []string
	for _, a := range p.Assignments {
		out = append(out, a.Nodes...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// HoldersOf returns the nodes holding the given expert's weights for layer,
// sorted; nil if none does. The slice is a fresh copy the caller may keep.
// It scans the assignments, so a router should build its own (expert, layer)
// table once per placement rather than call it per token.
func (p Placement) HoldersOf(expert, layer int) []string {
	for _, a := range p.Assignments {
		if a.Shard.Expert == expert && a.Shard.Contains(layer) {
			out := slices.Clone(a.Nodes)
			slices.Sort(out)
			return out
		}
	}
	return nil
}

// Validate checks that p is a complete, consistent placement of model m:
// p.Model equals m; every shard lies within the model; the shards of an
// expert do not overlap and cover every layer; every shard has at least one
// replica and its replicas are on distinct, non-empty node IDs. Errors wrap
// ErrInvalidPlacement. Validate does not know node capacities.
func (p Placement) Validate(m Model) error {
	if err := m.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidPlacement, err)
	}
	if p.Model != m {
		return fmt.Errorf("%w: computed for model %+v, not %+v", ErrInvalidPlacement, p.Model, m)
	}
	ranges := make([][]Shard, m.Experts)
	for _, a := range p.Assignments {
		s := a.Shard
		if s.Expert < 0 || s.Expert >= m.Experts || s.First < 0 || s.First >= s.End || s.End > m.Layers {
			return fmt.Errorf("%w: shard %+v outside the model", ErrInvalidPlacement, s)
		}
		if len(a.Nodes) == 0 {
			return fmt.Errorf("%w: %v has no replica", ErrInvalidPlacement, s)
		}
		nodes := slices.Clone(a.Nodes)
		slices.Sort(nodes)
		for i, id := range nodes {
			if id == "" {
				return fmt.Errorf("%w: %v has an empty node ID", ErrInvalidPlacement, s)
			}
			if i > 0 && nodes[i-1] == id {
				return fmt.Errorf("%w: %v has two replicas on node %q", ErrInvalidPlacement, s, id)
			}
		}
		ranges[s.Expert] = append(ranges[s.Expert], s)
	}
	for e, rs := range ranges {
		slices.SortFunc(rs, CompareShards)
		next := 0
		for _, s := range rs {
			if s.First < next {
				return fmt.Errorf("%w: %v overlaps another shard of expert %d", ErrInvalidPlacement, s, e)
			}
			if s.First > next {
				return fmt.Errorf("%w: expert %d layers %d-%d have no replica", ErrInvalidPlacement, e, next, s.First-1)
			}
			next = s.End
		}
		if next != m.Layers {
			return fmt.Errorf("%w: expert %d layers %d-%d have no replica", ErrInvalidPlacement, e, next, m.Layers-1)
		}
	}
	return nil
}

// Moves returns the number of replica placements in to that are not in from:
// each is a (shard, node) pair whose weights the node has to load. Replicas
// dropped in to cost nothing and are not counted.
func Moves(from, to Placement) int {
	type replica struct {
		shard Shard
		node  string
	}
	had := make(map[replica]bool)
	for _, a := range from.Assignments {
		for _, n := range a.Nodes {
			had[replica{a.Shard, n}] = true
		}
	}
	moves := 0
	for _, a := range to.Assignments {
		for _, n := range a.Nodes {
			r := replica{a.Shard, n}
			if !had[r] {
				moves++
				had[r] = true // count a duplicate in to once
			}
		}
	}
	return moves
}

var (
	// ErrInvalidInput is wrapped by the errors of Model.Validate, and by the
	// planner's errors about malformed input.
	ErrInvalidInput = errors.New("placement: invalid input")

	// ErrInvalidPlacement is wrapped by the errors of Placement.Validate.
	ErrInvalidPlacement = errors.New("placement: invalid placement")
)

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidInput}, args...)...)
}
