package model

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/moegrid/moegrid/model/kernel"
	"github.com/moegrid/moegrid/model/safetensors"
)

// ErrExpertNotHeld is returned by an Experts implementation asked for an
// (expert, layer) that it does not hold.
var ErrExpertNotHeld = errors.New("model: expert not held")

// ExpertBatch is the work for one expert in one layer: rows of activations in
// and the expert's output out.
type ExpertBatch struct {
	Expert int
	// Rows is the number of rows in In and Out.
	Rows int
	// In is [Rows, H]; the callee only reads it, and only during the call.
	In []float32
	// Out is [Rows, H]; the callee fills it before Forward returns nil.
	Out []float32
}

// Experts computes expert feed-forward blocks. The decoder calls Forward once
// per layer per step with every expert that step needs, each at most once, so
// that an implementation can send one request per node that holds them.
// Implementations must be safe for concurrent use.
type Experts interface {
	Forward(ctx context.Context, layer int, batches []ExpertBatch) error
}

// ExpertSet is an in-process set of experts loaded from a checkpoint: all of
// them for a whole model, or the shards an expert node holds. It implements
// Experts and is safe for concurrent use.
type ExpertSet struct {
	cfg     Config
	experts map[expertKey]*Expert
	closer  io.Closer
}

type expertKey struct{ layer, expert int }

var _ Experts = (*ExpertSet)(nil)

// LoadExperts maps the experts for which want(layer, expert) is true from the
// checkpoint in dir; want == nil loads them all. Only the shard files holding
// those tensors are opened; of a GGUF checkpoint (see IsGGUF), only those
// experts' byte ranges are read. Close releases the mapping.
func LoadExperts(dir string, cfg Config, want func(layer, expert int) bool) (*ExpertSet, error) {
	if IsGGUF(dir) {
		return loadGGUFExperts(dir, cfg, want)
	}
	ck, err := safetensors.OpenCheckpoint(dir, func(name string) bool {
		l, e, ok := ParseExpertTensor(name)
		return ok && l < cfg.NumHiddenLayers && e < cfg.NumLocalExperts && (want == nil || want(l, e))
	})
	if err != nil {
		return nil, fmt.Errorf("model: open checkpoint: %w", err)
	}
	s := &ExpertSet{cfg: cfg, experts: make(map[expertKey]*Expert), closer: ck}
	for l := range cfg.NumHiddenLayers {
		for e := range cfg.NumLocalExperts {
			if want != nil && !want(l, e) {
				continue
			}
			ex, err := loadExpert(ck, &cfg, l, e)
			if err != nil {
				ck.Close()
				return nil, err
			}
			s.experts[expertKey{l, e}] = ex
		}
	}
	return s, nil
}

// Has reports whether the set holds the expert for the layer.
func (s *ExpertSet) Has(layer, expert int) bool {
	_, ok := s.experts[expertKey{layer, expert}]
	return ok
}

// Len is the number of (layer, expert) pairs held.
func (s *ExpertSet) Len() int { return len(s.experts) }

// Bytes is the stored size of every expert weight held.
func (s *ExpertSet) Bytes() int64 {
	var n int64
	for _, e := range s.experts {
		n += e.Bytes()
	}
	return n
}

// Forward computes each batch with the expert it names. It fails with
// ErrExpertNotHeld, before computing anything, if any is missing.
func (s *ExpertSet) Forward(ctx context.Context, layer int, batches []ExpertBatch) error {
	H := s.cfg.HiddenSize
	for _, b := range batches {
		if !s.Has(layer, b.Expert) {
			return fmt.Errorf("%w: expert %d layer %d", ErrExpertNotHeld, b.Expert, layer)
		}
		if len(b.In) != b.Rows*H || len(b.Out) != b.Rows*H {
			return fmt.Errorf("model: expert %d layer %d: batch of %d rows has %d inputs and %d outputs, want %d", b.Expert, layer, b.Rows, len(b.In), len(b.Out), b.Rows*H)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// The experts of a layer run side by side, each on a worker of its
	// own, with fewer meetings of the workers than one after another
	// (three parallel loops each); a worker that finishes its expert first
	// takes chunks of the other's products. Which worker runs what does
	// not change a bit of the result.
	kernel.For(len(batches), 1, func(lo, hi int) {
		for _, b := range batches[lo:hi] {
			s.experts[expertKey{layer, b.Expert}].Forward(b.Out, b.In, b.Rows)
		}
	})
	return nil
}

// Close releases the checkpoint mapping; the set must not be used after.
func (s *ExpertSet) Close() error { return s.closer.Close() }
