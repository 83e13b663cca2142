package model

import (
	"fmt"

	"github.com/moegrid/moegrid/model/kernel"
	"github.com/moegrid/moegrid/model/safetensors"
)

// ExpertLayerBytes is the stored size of one expert's w1, w2 and w3 in one
// layer if every weight is in format f: what placement plans for a model
// that does not exist yet (moegrid plan --preset).
func (c *Config) ExpertLayerBytes(f kernel.Format) (int64, error) {
	H, F := c.HiddenSize, c.IntermediateSize
	up, err := f.MatrixBytes(F, H) // w1 and w3
	if err != nil {
		return 0, fmt.Errorf("model: expert size in %s: %w", f, err)
	}
	down, err := f.MatrixBytes(H, F) // w2
	if err != nil {
		return 0, fmt.Errorf("model: expert size in %s: %w", f, err)
	}
	return 2*up + down, nil
}

// CheckpointExpertLayerBytes is the stored size of one expert in one layer
// of the checkpoint in dir, read from its tensors (the largest over all
// experts and layers, for checkpoints that mix formats): what an expert
// shard really occupies once mapped. Only tensor headers are read. For a
// GGUF checkpoint (see IsGGUF) these are its quantized bytes.
func CheckpointExpertLayerBytes(dir string, cfg Config) (int64, error) {
	if IsGGUF(dir) {
		return ggufExpertLayerBytes(dir, cfg)
	}
	ck, err := safetensors.OpenCheckpoint(dir, func(name string) bool {
		l, e, ok := ParseExpertTensor(name)
		return ok && l < cfg.NumHiddenLayers && e < cfg.NumLocalExperts
	})
	if err != nil {
		return 0, fmt.Errorf("model: open checkpoint: %w", err)
	}
	defer ck.Close()
	var most int64
	for l := range cfg.NumHiddenLayers {
		for e := range cfg.NumLocalExperts {
			var n int64
			for _, name := range ExpertTensors(l, e) {
				t, err := ck.Tensor(name)
				if err != nil {
					return 0, fmt.Errorf("%w: %w", ErrWeights, err)
				}
				n += int64(len(t.Data))
			}
			most = max(most, n)
		}
	}
	return most, nil
}
