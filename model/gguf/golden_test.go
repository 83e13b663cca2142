package gguf

import (
	"bytes"
	"os"
	"reflect"
	"testing"
)

// testdata/ggufpy.gguf was written by llama.cpp's own Python writer
// (gguf-py's GGUFWriter) with testdata/ggufpy.py: metadata of several types,
// a nested array, and F32, F16 and stacked Q8_0 tensors.
func TestReadGGUFPy(t *testing.T) {
	f, err := OpenFile("testdata/ggufpy.gguf")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	md := f.Metadata()
	if s, err := md.String("general.architecture"); err != nil || s != "llama" {
		t.Errorf("architecture %q, %v", s, err)
	}
	if n, err := md.Uint("llama.block_count"); err != nil || n != 2 {
		t.Errorf("block_count %d, %v", n, err)
	}
	if e, err := md.Float("llama.attention.layer_norm_rms_epsilon"); err != nil || float32(e) != 1e-5 {
		t.Errorf("epsilon %g, %v", e, err)
	}
	if tok, err := md.Strings("tokenizer.ggml.tokens"); err != nil || !reflect.DeepEqual(tok, []string{"<unk>", "<s>", "</s>", "▁a"}) {
		t.Errorf("tokens %q, %v", tok, err)
	}
	if v, _ := md.Lookup("nested"); v.String() != "[[1 2] [3]]" {
		t.Errorf("nested = %s", v)
	}
	want := map[string]struct {
		typ   TensorType
		shape []uint64
	}{
		"token_embd.weight":        {TypeF32, []uint64{8, 3}},
		"blk.0.ffn_up_exps.weight": {TypeQ8_0, []uint64{64, 4, 2}},
		"blk.0.attn_norm.weight":   {TypeF16, []uint64{8}},
	}
	for name, w := range want {
		tt, err := f.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		if tt.Type != w.typ || !reflect.DeepEqual(tt.Shape, w.shape) {
			t.Errorf("%s: %s %v, want %s %v", name, tt.Type, tt.Shape, w.typ, w.shape)
		}
	}
}

// TestWriteMatchesGGUFPy checks that this package writes exactly the bytes
// llama.cpp's writer does for the same content.
func TestWriteMatchesGGUFPy(t *testing.T) {
	want, err := os.ReadFile("testdata/ggufpy.gguf")
	if err != nil {
		t.Fatal(err)
	}
	h, err := Parse(want)
	if err != nil {
		t.Fatal(err)
	}
	var tensors []Tensor
	for _, ti := range h.Tensors {
		start := h.DataOffset + ti.Offset
		tensors = append(tensors, Tensor{TensorInfo: ti, Data: want[start : start+ti.Size]})
	}
	if got := rewrite(t, h, tensors); !bytes.Equal(got, want) {
		t.Errorf("rewritten file differs: %d bytes, want %d", len(got), len(want))
	}
}
