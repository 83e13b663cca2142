package model_test

import (
	"testing"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/kernel"
	"github.com/moegrid/moegrid/model/safetensors"
)

// TestExpertLayerBytes checks that the size planned from a format equals
// what a checkpoint of that format holds, and what the loaded experts
// occupy.
func TestExpertLayerBytes(t *testing.T) {
	for _, tc := range []struct {
		dtype  safetensors.DType
		format kernel.Format
		want   int64
	}{
		{safetensors.F32, kernel.F32, 3 * 128 * 256 * 4},
		{safetensors.BF16, kernel.BF16, 3 * 128 * 256 * 2},
	} {
		t.Run(string(tc.format), func(t *testing.T) {
			dir := checkpoint(t, "tiny", 1, tc.dtype, 2)
			cfg, err := model.LoadConfig(dir)
			if err != nil {
				t.Fatal(err)
			}
			planned, err := cfg.ExpertLayerBytes(tc.format)
			if err != nil || planned != tc.want {
				t.Fatalf("ExpertLayerBytes(%s) = %d, %v; want %d", tc.format, planned, err, tc.want)
			}
			stored, err := model.CheckpointExpertLayerBytes(dir, cfg)
			if err != nil || stored != tc.want {
				t.Fatalf("CheckpointExpertLayerBytes = %d, %v; want %d", stored, err, tc.want)
			}
			ex, err := model.LoadExperts(dir, cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer ex.Close()
			if got := ex.Bytes() / int64(ex.Len()); got != tc.want {
				t.Errorf("loaded experts hold %d bytes each, want %d", got, tc.want)
			}
		})
	}
	if _, err := (&model.Config{HiddenSize: 10, IntermediateSize: 3}).ExpertLayerBytes(kernel.Format("Q9")); err == nil {
		t.Error("ExpertLayerBytes of an unknown format: no error")
	}
}
