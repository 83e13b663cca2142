package main

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moegrid/moegrid/model/kernel"
)

// The GGUF files llama.cpp wrote from one checkpoint (see the model
// package's TestGGUFLlamaCpp): F32, and quantized by llama-quantize.
var (
	ggufF32 = filepath.Join("..", "..", "model", "testdata", "gguf", "small-f32.gguf")
	ggufQ8  = filepath.Join("..", "..", "model", "testdata", "gguf", "small-q8_0.gguf")
)

func TestModelCommandsOnGGUF(t *testing.T) {
	out, err := runCmd(t, "model", "inspect", ggufQ8, "-o", "json")
	if err != nil {
		t.Fatal(err, out)
	}
	var s inspectSummary
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	perLayer, err := s.Config.ExpertLayerBytes(kernel.Q8_0)
	if err != nil {
		t.Fatal(err)
	}
	if s.BytesPerExpertLayer != perLayer || !slices.Contains(s.DTypes, "Q8_0") {
		t.Errorf("inspect: %d bytes per expert-layer in %v, want %d in Q8_0", s.BytesPerExpertLayer, s.DTypes, perLayer)
	}
	if i := slices.IndexFunc(s.Tensors, func(ts tensorSummary) bool { return ts.Name == "blk.0.ffn_down_exps.weight" }); i < 0 || !slices.Equal(s.Tensors[i].Shape, []int{4, 128, 256}) {
		t.Errorf("inspect does not list blk.0.ffn_down_exps.weight as [experts, rows, cols] = [4 128 256]: %+v", s.Tensors)
	}

	out, err = runCmd(t, "plan", "--model", ggufQ8, "--nodes", "2", "--capacity", "1MiB")
	if err != nil {
		t.Fatal(err, out)
	}
	if want := "4 experts × 1 layers × 102 KiB per expert-layer"; !strings.Contains(out, want) {
		t.Errorf("plan output lacks %q:\n%s", want, out)
	}

	// eval and generate take the prompt through the file's own tokenizer.
	for _, path := range []string{ggufF32, ggufQ8} {
		out, err = runCmd(t, "model", "eval", "--model", path, "--prompt", "Hello")
		if err != nil {
			t.Fatal(err, out)
		}
		var ev evalResult
		if err := json.Unmarshal([]byte(out), &ev); err != nil {
			t.Fatal(err)
		}
		if len(ev.LogitsLast) != 512 || len(ev.Experts) != 1 {
			t.Errorf("eval of %s: %d logits, %d layers of experts; want 512, 1", path, len(ev.LogitsLast), len(ev.Experts))
		}
	}
	greedy := func(path string) []int {
		t.Helper()
		out, err := runCmd(t, "model", "generate", "--model", path, "--ids", "1,415,298", "--max-tokens", "8", "--ignore-eos")
		if err != nil {
			t.Fatal(err, out)
		}
		var g struct{ IDs []int }
		if err := json.Unmarshal([]byte(out), &g); err != nil {
			t.Fatal(err)
		}
		return g.IDs
	}
	if f32, q8 := greedy(ggufF32), greedy(ggufQ8); len(f32) != 8 || len(q8) != 8 {
		t.Errorf("generate: %v from F32, %v from Q8_0; want 8 tokens each", f32, q8)
	}
}
