package convert

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/gguf"
	"github.com/moegrid/moegrid/model/kernel"
	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/synth"
	"github.com/moegrid/moegrid/model/tokenizer"
)

func synthDir(t *testing.T, p synth.Preset, dtype safetensors.DType) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ckpt")
	if err := synth.Write(dir, synth.Options{Preset: p, Seed: 3, DType: dtype, Shards: 2}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// check opens the converted file and compares every Hugging Face tensor
// of the checkpoint, read back through gguf's Hugging Face view, with
// what the scheme makes of the source: the same bytes.
func check(t *testing.T, dir, out string, scheme gguf.Scheme) {
	t.Helper()
	c, err := gguf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := gguf.ReadLlamaParams(c.Metadata())
	if err != nil {
		t.Fatal(err)
	}
	if p.EmbeddingLength != cfg.HiddenSize || p.BlockCount != cfg.NumHiddenLayers || p.ExpertCount != cfg.NumLocalExperts ||
		p.HeadCountKV != cfg.NumKeyValueHeads || p.RMSNormEps != cfg.RMSNormEps || p.RopeFreqBase != cfg.RopeTheta || p.VocabSize != cfg.VocabSize {
		t.Errorf("params %+v for config %+v", p, cfg)
	}
	tok, err := tokenizer.FromGGUF(c.Metadata())
	if err != nil {
		t.Fatal(err)
	}
	ref, err := tokenizer.Load(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	const text = "Mixtral in one file: weights, config and tokenizer."
	if !slices.Equal(tok.Encode(text, true), ref.Encode(text, true)) {
		t.Errorf("tokenizers differ on %q", text)
	}
	ck, err := safetensors.OpenCheckpoint(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	for _, name := range ck.Names() {
		src, err := ck.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.HFTensor(name)
		if err != nil {
			t.Fatal(err)
		}
		cols := src.Shape[len(src.Shape)-1]
		x := make([]float32, src.NumElements())
		if err := src.ToFloat32(x); err != nil {
			t.Fatal(err)
		}
		f, err := got.Format()
		if err != nil {
			t.Fatal(err)
		}
		// The router is kept in F32, as llama.cpp's converter does.
		if len(src.Shape) == 2 && scheme == "" && !strings.HasSuffix(name, "block_sparse_moe.gate.weight") && string(f) != string(src.DType) {
			t.Errorf("%s: %s, want the source's %s", name, f, src.DType)
		}
		want, err := kernel.Quantize(f, len(x)/cols, cols, x)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Data, want) {
			t.Errorf("%s: %s data differs from the source's", name, f)
		}
	}
}

func TestWriteFloat(t *testing.T) {
	tiny, _ := synth.PresetByName("tiny")
	for _, dtype := range []safetensors.DType{safetensors.F32, safetensors.BF16} {
		dir := synthDir(t, tiny, dtype)
		out := filepath.Join(t.TempDir(), "tiny.gguf")
		st, err := Write(context.Background(), dir, out, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if st.Tensors != 3+2*10 || st.Bytes == 0 {
			t.Errorf("%s: stats %+v", dtype, st)
		}
		check(t, dir, out, "")
	}
}

func TestWriteQuantized(t *testing.T) {
	tiny, _ := synth.PresetByName("tiny")
	dir := synthDir(t, tiny, safetensors.BF16)
	out := filepath.Join(t.TempDir(), "q8.gguf")
	st, err := Write(context.Background(), dir, out, Options{Scheme: gguf.SchemeQ8_0})
	if err != nil {
		t.Fatal(err)
	}
	if st.ByType[gguf.TypeQ8_0] != 2+2*7 || st.ByType[gguf.TypeF32] != 1+2*3 {
		t.Errorf("types %v", st.ByType)
	}
	check(t, dir, out, gguf.SchemeQ8_0)

	// Rows of 128 fit no K-quant.
	if _, err := Write(context.Background(), dir, filepath.Join(t.TempDir(), "q4.gguf"), Options{Scheme: gguf.SchemeQ4_K_M}); !errors.Is(err, gguf.ErrType) {
		t.Errorf("Q4_K_M of 128-wide rows: %v", err)
	}

	// A model of 256-wide rows, as Q4_K_M.
	wide := synth.Preset{Name: "wide", Hidden: 256, Layers: 2, Heads: 4, KVHeads: 2, Intermediate: 256}
	dir = synthDir(t, wide, safetensors.BF16)
	out = filepath.Join(t.TempDir(), "q4km.gguf")
	st, err = Write(context.Background(), dir, out, Options{Scheme: gguf.SchemeQ4_K_M})
	if err != nil {
		t.Fatal(err)
	}
	if st.ByType[gguf.TypeQ4_K] == 0 || st.ByType[gguf.TypeQ6_K] == 0 || st.ByType[gguf.TypeQ8_0] == 0 || st.ByType[gguf.TypeQ5_K] == 0 {
		t.Errorf("Q4_K_M of 8 experts: types %v", st.ByType)
	}
	check(t, dir, out, gguf.SchemeQ4_K_M)
}

func TestWriteCancelled(t *testing.T) {
	tiny, _ := synth.PresetByName("tiny")
	dir := synthDir(t, tiny, safetensors.BF16)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out := filepath.Join(t.TempDir(), "x.gguf")
	if _, err := Write(ctx, dir, out, Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	if _, err := gguf.OpenFile(out); err == nil {
		t.Errorf("a cancelled conversion left %s", out)
	}
}
