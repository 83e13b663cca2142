package placement

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
)

// DefaultLoadTolerance is the Options.LoadTolerance used when it is zero.
const DefaultLoadTolerance = 0.25

// Options tune Compute. The zero value is valid: one replica per shard, no
// cap on extra replicas, DefaultLoadTolerance.
type Options struct {
	// MinReplicas is the number of distinct nodes every shard is held on;
	// 0 means 1. With MinReplicas >= 2, losing any MinReplicas-1 nodes loses
	// no expert.
	MinReplicas int `json:"min_replicas,omitempty"`
	// MaxReplicas caps the replicas of a shard, extra replicas included;
	// 0 means no cap. It must not be below MinReplicas.
	MaxReplicas int `json:"max_replicas,omitempty"`
	// LoadTolerance is the hysteresis on load statistics, as a fraction: an
	// existing extra replica moves from a cold shard to a hot one only if the
	// hot shard's load per replica exceeds the cold one's (counted with one
	// replica fewer) by more than this. 0 means DefaultLoadTolerance; use a
	// tiny positive value to follow the load statistics exactly.
	LoadTolerance float64 `json:"load_tolerance,omitempty"`
}

// Input is everything a placement depends on.
type Input struct {
	// Nodes are the schedulable nodes, in any order. Draining nodes may be
	// included; they get no shards.
	Nodes []Node
	// Model is the shape of the expert weights.
	Model Model
	// Load is the relative load of each expert (for example tokens routed to
	// it recently), indexed by expert; nil means uniform. Only ratios matter.
	Load []float64
	// Options tune replication.
	Options Options
	// Previous is the placement in force, or nil. It is only used when it was
	// computed for the same Model.
	Previous *Placement
}

// Compute returns the placement of in.Model's shards on in.Nodes. See the
// package documentation for the algorithm and its guarantees. The result
// passes Validate(in.Model), keeps every node within its capacity and every
// shard's replicas on distinct nodes; its Version is zero.
//
// Errors: ErrInvalidInput (wrapped) for malformed input, ErrNoNodes,
// ErrTooFewNodes (wrapped) when MinReplicas exceeds the schedulable nodes,
// and *InsufficientCapacityError when the nodes cannot hold MinReplicas
// copies of the model at all.
func Compute(in Input) (Placement, error) {
	p, _, err := compute(in)
	return p, err
}

// plan describes how compute arrived at its result (for tests).
type plan struct {
	k         int  // shards per expert
	kept      bool // previous replicas were kept (stable path)
	displaced int  // kept replicas moved to make room for required ones
}

type normalized struct {
	model    Model
	nodes    []Node // schedulable, sorted by ID
	load     []float64
	minR     int
	maxR     int // 0: no cap
	tol      float64
	previous *Placement
}

func compute(in Input) (Placement, plan, error) {
	n, err := normalize(in)
	if err != nil {
		return Placement{}, plan{}, err
	}
	m := n.model
	if len(n.nodes) == 0 {
		return Placement{}, plan{}, ErrNoNodes
	}
	if n.minR > len(n.nodes) {
		return Placement{}, plan{}, fmt.Errorf("%w: %d replicas, %d schedulable nodes", ErrTooFewNodes, n.minR, len(n.nodes))
	}
	// Exact feasibility test at layer granularity: every node holds at most
	// one copy of each expert layer, in whole layers.
	expertLayers := int64(m.Experts) * int64(m.Layers)
	var units int64
	for _, nd := range n.nodes {
		units += min(nd.CapacityBytes/m.BytesPerExpertLayer, expertLayers)
	}
	need := m.TotalBytes() * int64(n.minR)
	if have := units * m.BytesPerExpertLayer; have < need {
		return Placement{}, plan{}, &InsufficientCapacityError{Need: need, Have: have}
	}

	prevK := granularityOf(n.previous)
	if prevK > 0 && n.mayFit(prevK) {
		for _, roomiest := range []bool{false, true} {
			if p, how, ok := n.attempt(prevK, true, roomiest); ok {
				return p, how, nil
			}
		}
	}
	for k := 1; k <= m.Layers; k++ {
		if !n.mayFit(k) {
			continue
		}
		// prevK was tried with the previous replicas above; shards of a finer
		// granularity may lie inside previous ones.
		keep := n.previous != nil && k != prevK
		p, how, ok := n.attempt(k, keep, false)
		if !ok && how.kept {
			p, how, ok = n.attempt(k, false, false)
		}
		if !ok {
			p, how, ok = n.attempt(k, false, true)
		}
		if ok {
			return p, how, nil
		}
	}
	// Unreachable: with single-layer shards the roomiest-first packing
	// succeeds whenever the capacity test above passes.
	return Placement{}, plan{}, errors.New("placement: internal error: no packing found although capacity suffices")
}

func normalize(in Input) (normalized, error) {
	if err := in.Model.Validate(); err != nil {
		return normalized{}, err
	}
	m := in.Model
	if len(in.Nodes) > MaxNodes {
		return normalized{}, invalidf("%d nodes exceed the limit of %d", len(in.Nodes), MaxNodes)
	}
	nodes := slices.Clone(in.Nodes)
	slices.SortFunc(nodes, func(a, b Node) int { return cmp.Compare(a.ID, b.ID) })
	for i, nd := range nodes {
		if nd.ID == "" {
			return normalized{}, invalidf("node with an empty ID")
		}
		if i > 0 && nodes[i-1].ID == nd.ID {
			return normalized{}, invalidf("duplicate node ID %q", nd.ID)
		}
		if nd.CapacityBytes < 0 {
			return normalized{}, invalidf("node %q: negative capacity %d", nd.ID, nd.CapacityBytes)
		}
	}
	nodes = slices.DeleteFunc(nodes, func(nd Node) bool { return nd.Draining })

	load := make([]float64, m.Experts)
	switch len(in.Load) {
	case 0:
		for e := range load {
			load[e] = 1
		}
	case m.Experts:
		for e, l := range in.Load {
			if l < 0 || math.IsNaN(l) || math.IsInf(l, 0) {
				return normalized{}, invalidf("load of expert %d is %v, want a finite value >= 0", e, l)
			}
			load[e] = l
		}
	default:
		return normalized{}, invalidf("load has %d values for %d experts", len(in.Load), m.Experts)
	}

	o := in.Options
	minR := o.MinReplicas
	switch {
	case minR < 0:
		return normalized{}, invalidf("MinReplicas %d is negative", minR)
	case minR == 0:
		minR = 1
	}
	if o.MaxReplicas < 0 || o.MaxReplicas > 0 && o.MaxReplicas < minR {
		return normalized{}, invalidf("MaxReplicas %d below MinReplicas %d", o.MaxReplicas, minR)
	}
	tol := o.LoadTolerance
	switch {
	case tol < 0 || math.IsNaN(tol) || math.IsInf(tol, 0):
		return normalized{}, invalidf("LoadTolerance %v, want a finite value >= 0", tol)
	case tol == 0:
		tol = DefaultLoadTolerance
	}
	prev := in.Previous
	if prev != nil && prev.Model != m {
		prev = nil // a different model's shards mean nothing here
	}
	return normalized{model: m, nodes: nodes, load: load, minR: minR, maxR: o.MaxReplicas, tol: tol, previous: prev}, nil
}

// mayFit is a quick necessary condition for granularity k: MinReplicas nodes
// fit the largest shard, and there are enough slots for the smallest.
func (n *normalized) mayFit(k int) bool {
	ranges := splitRanges(n.model.Layers, k)
	b := n.model.BytesPerExpertLayer
	largest := int64(ranges[0][1]-ranges[0][0]) * b
	smallest := int64(ranges[k-1][1]-ranges[k-1][0]) * b
	shards := int64(n.model.Experts) * int64(k)
	fits := 0
	var slots int64
	for _, nd := range n.nodes {
		if nd.CapacityBytes >= largest {
			fits++
		}
		slots += min(nd.CapacityBytes/smallest, shards)
	}
	return fits >= n.minR && slots >= shards*int64(n.minR)
}

// attempt runs the packer at granularity k. keep: start from the previous
// placement's replicas; roomiest: place required replicas on the nodes with
// the most free memory instead of the least full ones. It reports how the
// placement was made, whether or not it succeeded.
func (n *normalized) attempt(k int, keep, roomiest bool) (Placement, plan, bool) {
	pk := newPacker(n, k)
	kept := false
	if keep && n.previous != nil {
		kept = pk.keep(n.previous)
	}
	how := plan{k: k, kept: kept}
	if !pk.run(kept, roomiest) {
		return Placement{}, how, false
	}
	how.displaced = pk.displaced
	return pk.result(), how, true
}

// splitRanges cuts [0, layers) into k contiguous ranges whose sizes differ by
// at most one, the longer ones first.
func splitRanges(layers, k int) [][2]int {
	out := make([][2]int, k)
	size, extra := layers/k, layers%k
	first := 0
	for i := range out {
		end := first + size
		if i < extra {
			end++
		}
		out[i] = [2]int{first, end}
		first = end
	}
	return out
}

// granularityOf returns the k whose splitRanges all of prev's shards come
// from (the smallest such k), or 0 if there is none or prev is empty.
func granularityOf(prev *Placement) int {
	if prev == nil || len(prev.Assignments) == 0 {
		return 0
	}
	m := prev.Model
	var ranges [][2]int
	for _, a := range prev.Assignments {
		r := [2]int{a.Shard.First, a.Shard.End}
		if a.Shard.Expert < 0 || a.Shard.Expert >= m.Experts {
			return 0
		}
		if !slices.Contains(ranges, r) {
			ranges = append(ranges, r)
		}
	}
next:
	for k := len(ranges); k <= m.Layers; k++ {
		split := splitRanges(m.Layers, k)
		for _, r := range ranges {
			if !slices.Contains(split, r) {
				continue next
			}
		}
		return k
	}
	return 0
}
