package gguf

import "testing"

// TestSchemeTensorType checks the types of Mixtral-8x7B's tensors (32
// layers, 8 experts). The rules were checked against llama-quantize
// (c392e50) on a 32-layer, 8-expert model of 256-wide weights written by
// this package: for each of the five schemes its 323 tensors got these
// types, and moegrid's quantizers gave the same bytes.
func TestSchemeTensorType(t *testing.T) {
	const layers, experts = 32, 8
	for _, tc := range []struct {
		s     Scheme
		name  string
		shape []uint64
		want  TensorType
	}{
		{SchemeQ4_K_M, "token_embd.weight", []uint64{4096, 32000}, TypeQ4_K},
		{SchemeQ4_K_M, "output.weight", []uint64{4096, 32000}, TypeQ6_K},
		{SchemeQ4_K_M, "output_norm.weight", []uint64{4096}, TypeF32},
		{SchemeQ4_K_M, "blk.5.attn_norm.weight", []uint64{4096}, TypeF32},
		{SchemeQ4_K_M, "blk.5.ffn_gate_inp.weight", []uint64{4096, 8}, TypeF32},
		{SchemeQ4_K_M, "blk.5.attn_q.weight", []uint64{4096, 4096}, TypeQ4_K},
		{SchemeQ4_K_M, "blk.5.attn_k.weight", []uint64{4096, 1024}, TypeQ8_0},
		{SchemeQ4_K_M, "blk.5.attn_v.weight", []uint64{4096, 1024}, TypeQ8_0},
		{SchemeQ4_K_M, "blk.5.attn_output.weight", []uint64{4096, 4096}, TypeQ5_K},
		{SchemeQ4_K_M, "blk.0.ffn_down_exps.weight", []uint64{14336, 4096, 8}, TypeQ6_K},
		{SchemeQ4_K_M, "blk.5.ffn_down_exps.weight", []uint64{14336, 4096, 8}, TypeQ4_K},
		{SchemeQ4_K_M, "blk.6.ffn_down_exps.weight", []uint64{14336, 4096, 8}, TypeQ6_K},
		{SchemeQ4_K_M, "blk.31.ffn_down.3.weight", []uint64{14336, 4096}, TypeQ6_K},
		{SchemeQ4_K_M, "blk.5.ffn_gate_exps.weight", []uint64{4096, 14336, 8}, TypeQ4_K},
		{SchemeQ4_K_M, "blk.5.ffn_up_exps.weight", []uint64{4096, 14336, 8}, TypeQ4_K},
		{SchemeQ8_0, "output.weight", []uint64{4096, 32000}, TypeQ8_0},
		{SchemeQ8_0, "blk.0.ffn_down_exps.weight", []uint64{14336, 4096, 8}, TypeQ8_0},
		{SchemeQ4_0, "output.weight", []uint64{4096, 32000}, TypeQ6_K},
		{SchemeQ4_0, "blk.3.attn_v.weight", []uint64{4096, 1024}, TypeQ8_0},
		{SchemeQ6_K, "blk.3.attn_q.weight", []uint64{4096, 4096}, TypeQ6_K},
	} {
		got, err := tc.s.TensorType(tc.name, tc.shape, TypeF32, layers, experts)
		if err != nil || got != tc.want {
			t.Errorf("%s %s: %v, %v; want %v", tc.s, tc.name, got, err, tc.want)
		}
	}
	// The tiny model of TestLlamaQuantize: one layer, two experts.
	if got, _ := SchemeQ4_K_M.TensorType("blk.0.attn_v.weight", []uint64{256, 128}, TypeF32, 1, 2); got != TypeQ6_K {
		t.Errorf("one-layer attn_v: %v", got)
	}
	if _, err := SchemeQ4_K_M.TensorType("blk.0.attn_q.weight", []uint64{100, 100}, TypeF32, 1, 2); err == nil {
		t.Errorf("rows of 100: no error")
	}
	for name, want := range map[string]Scheme{"q4_k": SchemeQ4_K_M, "Q8_0": SchemeQ8_0, "q6_k": SchemeQ6_K} {
		if s, err := ParseScheme(name); err != nil || s != want {
			t.Errorf("ParseScheme(%q) = %v, %v", name, s, err)
		}
	}
	if _, err := ParseScheme("q3_k"); err == nil {
		t.Errorf("q3_k: no error")
	}
}
