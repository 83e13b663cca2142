package model_test

import (
	"slices"
	"testing"

	"github.com/moegrid/moegrid/model"
)

func TestParseExpertTensor(t *testing.T) {
	for _, tc := range []struct {
		name          string
		layer, expert int
		ok            bool
	}{
		{"model.layers.0.block_sparse_moe.experts.0.w1.weight", 0, 0, true},
		{"model.layers.0.block_sparse_moe.experts.0.w2.weight", 0, 0, true},
		{"model.layers.0.block_sparse_moe.experts.0.w3.weight", 0, 0, true},
		{"model.layers.31.block_sparse_moe.experts.7.w2.weight", 31, 7, true},
		{"model.layers.10.block_sparse_moe.experts.12.w1.weight", 10, 12, true}, // experts beyond 8 parse; the loader bounds them
		// Not expert weights.
		{"model.layers.0.block_sparse_moe.gate.weight", 0, 0, false},
		{"model.layers.0.self_attn.q_proj.weight", 0, 0, false},
		{"model.layers.0.input_layernorm.weight", 0, 0, false},
		{"model.embed_tokens.weight", 0, 0, false},
		{"lm_head.weight", 0, 0, false},
		{"", 0, 0, false},
		// Near misses.
		{"model.layers.0.block_sparse_moe.experts.0.w4.weight", 0, 0, false},
		{"model.layers.0.block_sparse_moe.experts.0.w1", 0, 0, false},
		{"model.layers.0.block_sparse_moe.experts.0.w1.weight.bias", 0, 0, false},
		{"model.layers.0.block_sparse_moe.experts.0.w1.bias", 0, 0, false},
		{"model.layers.0.block_sparse_moe.experts.w1.weight", 0, 0, false},
		{"model.layers.0.block_sparse_moe.experts..w1.weight", 0, 0, false},
		{"model.layers..block_sparse_moe.experts.0.w1.weight", 0, 0, false},
		{"model.layers.block_sparse_moe.experts.0.w1.weight", 0, 0, false},
		{"model.layers.0.block_sparse_moe.experts.0.0.w1.weight", 0, 0, false},
		{"model.layers.0.1.block_sparse_moe.experts.0.w1.weight", 0, 0, false},
		{"xmodel.layers.0.block_sparse_moe.experts.0.w1.weight", 0, 0, false},
		{"model.layers.0.block_sparse_moe.experts.0.w1.weight ", 0, 0, false},
		{"model.layers.0.block_sparse_moe.experts.0.W1.weight", 0, 0, false},
		{"model.layers.x.block_sparse_moe.experts.0.w1.weight", 0, 0, false},
		{"model.layers.0.block_sparse_moe.experts.y.w1.weight", 0, 0, false},
		{"model.layers.-1.block_sparse_moe.experts.0.w1.weight", 0, 0, false},
		{"model.layers.0.block_sparse_moe.experts.-1.w1.weight", 0, 0, false},
		{"model.layers.99999999999999999999.block_sparse_moe.experts.0.w1.weight", 0, 0, false},
		// Numbers not in canonical form name no module of the checkpoint:
		// they must not alias layer 1 or expert 2.
		{"model.layers.+1.block_sparse_moe.experts.0.w1.weight", 0, 0, false},
		{"model.layers.01.block_sparse_moe.experts.0.w1.weight", 0, 0, false},
		{"model.layers.1.block_sparse_moe.experts.02.w1.weight", 0, 0, false},
		{"model.layers.1.block_sparse_moe.experts.+2.w1.weight", 0, 0, false},
		{"model.layers.-0.block_sparse_moe.experts.0.w1.weight", 0, 0, false},
		// transformers v5 in-memory names (fused experts under mlp) are not
		// the on-disk names.
		{"model.layers.0.mlp.experts.0.gate_proj.weight", 0, 0, false},
		{"model.layers.0.mlp.experts.gate_up_proj", 0, 0, false},
	} {
		l, e, ok := model.ParseExpertTensor(tc.name)
		if l != tc.layer || e != tc.expert || ok != tc.ok {
			t.Errorf("ParseExpertTensor(%q) = (%d, %d, %v), want (%d, %d, %v)", tc.name, l, e, ok, tc.layer, tc.expert, tc.ok)
		}
	}
}

func TestExpertTensorsRoundTrip(t *testing.T) {
	want := [3]string{
		"model.layers.3.block_sparse_moe.experts.5.w1.weight",
		"model.layers.3.block_sparse_moe.experts.5.w2.weight",
		"model.layers.3.block_sparse_moe.experts.5.w3.weight",
	}
	if got := model.ExpertTensors(3, 5); got != want {
		t.Errorf("ExpertTensors(3, 5) = %v, want %v", got, want)
	}
	var seen []string
	for l := range 40 {
		for e := range 12 {
			for _, name := range model.ExpertTensors(l, e) {
				gl, ge, ok := model.ParseExpertTensor(name)
				if !ok || gl != l || ge != e {
					t.Errorf("ParseExpertTensor(%q) = (%d, %d, %v), want (%d, %d, true)", name, gl, ge, ok, l, e)
				}
				seen = append(seen, name)
			}
		}
	}
	slices.Sort(seen)
	if n := len(slices.Compact(seen)); n != 40*12*3 {
		t.Errorf("%d distinct names, want %d", n, 40*12*3)
	}
}

// FuzzParseExpertTensor checks that whatever ParseExpertTensor accepts is
// exactly one of the names ExpertTensors gives for that layer and expert.
func FuzzParseExpertTensor(f *testing.F) {
	for _, s := range []string{
		"model.layers.0.block_sparse_moe.experts.0.w1.weight",
		"model.layers.31.block_sparse_moe.experts.7.w3.weight",
		"model.layers.1.block_sparse_moe.gate.weight",
		"model.norm.weight",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		l, e, ok := model.ParseExpertTensor(name)
		if !ok {
			if l != 0 || e != 0 {
				t.Fatalf("rejected %q with (%d, %d)", name, l, e)
			}
			return
		}
		names := model.ExpertTensors(l, e)
		if l < 0 || e < 0 || !slices.Contains(names[:], name) {
			t.Fatalf("ParseExpertTensor(%q) = (%d, %d, true), not a name of ExpertTensors(%d, %d)", name, l, e, l, e)
		}
	})
}
