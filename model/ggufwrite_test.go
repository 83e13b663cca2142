package model_test

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/gguf"
	"github.com/moegrid/moegrid/model/kernel"
	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/synth"
)

// writeWithMoegrid writes the checkpoint in dir as GGUF with WriteGGUF and
// returns the file's path and the notices it gave.
func writeWithMoegrid(t *testing.T, dir, typ string) (string, []string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "out.gguf")
	var notices []string
	infos, err := model.WriteGGUF(context.Background(), dir, path, model.GGUFWriteOptions{
		Type:   typ,
		Notice: func(msg string) { notices = append(notices, msg) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ck, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	for _, info := range infos {
		got, err := ck.Info(info.Name)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(info, got); diff != "" {
			t.Errorf("WriteGGUF returned %s as %+v, the file holds %+v", info.Name, info, got)
		}
	}
	return path, notices
}

// dequantizedFile rewrites the GGUF file at path with every tensor
// dequantized to F32: the independent reference for a quantized file.
func dequantizedFile(t *testing.T, path string) string {
	t.Helper()
	ck, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	var tensors []gguf.Tensor
	for _, name := range ck.Names() {
		tn, err := ck.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		v, err := tn.Float32s()
		if err != nil {
			t.Fatal(err)
		}
		tensors = append(tensors, gguf.Tensor{TensorInfo: gguf.TensorInfo{Name: name, Type: gguf.TypeF32, Shape: tn.Shape}, Data: f32Bytes(v)})
	}
	out := filepath.Join(t.TempDir(), "dequantized.gguf")
	if err := gguf.WriteFile(out, ck.Metadata().All(), tensors); err != nil {
		t.Fatal(err)
	}
	return out
}

func fileTypes(t *testing.T, path string) map[string]gguf.TensorType {
	t.Helper()
	ck, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	out := map[string]gguf.TensorType{}
	for _, name := range ck.Names() {
		info, err := ck.Info(name)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = info.Type
	}
	return out
}

// An F32 checkpoint converted, keeping its dtype or asking for F32, runs
// bit for bit as the safetensors checkpoint does, with its configuration
// and tokenizer.
func TestWriteGGUFF32(t *testing.T) {
	dir := tinyDir(t)
	ref := loadWhole(t, dir)
	wantLogits, wantRoutes := run(t, ref.m, ref.ex, ggufPrompt)
	wantCfg := ref.m.Config
	wantCfg.TorchDType = ""
	tok, err := model.LoadTokenizer(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"", "f32", "F32"} {
		t.Run("type="+typ, func(t *testing.T) {
			path, notices := writeWithMoegrid(t, dir, typ)
			if len(notices) != 0 {
				t.Errorf("notices %q, want none", notices)
			}
			g := loadWhole(t, path)
			if diff := cmp.Diff(wantCfg, g.m.Config); diff != "" {
				t.Errorf("config (-config.json +gguf):\n%s", diff)
			}
			logits, routes := run(t, g.m, g.ex, ggufPrompt)
			for i := range logits {
				if math.Float32bits(logits[i]) != math.Float32bits(wantLogits[i]) {
					t.Fatalf("logit %d = %v, safetensors %v", i, logits[i], wantLogits[i])
				}
			}
			if diff := cmp.Diff(wantRoutes, routes); diff != "" {
				t.Errorf("routes differ:\n%s", diff)
			}
			gtok, err := model.LoadTokenizer(path)
			if err != nil {
				t.Fatal(err)
			}
			const text = "The quick brown fox, 42 times: ünïcode!"
			if got, want := gtok.Encode(text, true), tok.Encode(text, true); !slices.Equal(got, want) {
				t.Errorf("the file's tokenizer encodes %v, tokenizer.json %v", got, want)
			}
			for name, typ := range fileTypes(t, path) {
				if typ != gguf.TypeF32 {
					t.Errorf("%s is %s, want F32", name, typ)
				}
			}
		})
	}
}

// A BF16 checkpoint keeps its matrices in BF16 (norms and router in F32,
// the same values widened) and computes what the safetensors checkpoint
// does; asked for F16, the matrices are F16.
func TestWriteGGUFFloatTypes(t *testing.T) {
	dir := checkpoint(t, "tiny", 1, safetensors.BF16, 2)
	ref := loadWhole(t, dir)
	wantLogits, wantRoutes := run(t, ref.m, ref.ex, ggufPrompt)
	for _, tc := range []struct {
		typ    string
		matrix gguf.TensorType
	}{
		{"", gguf.TypeBF16},
		{"bf16", gguf.TypeBF16},
		{"f16", gguf.TypeF16},
	} {
		t.Run("type="+tc.typ, func(t *testing.T) {
			path, _ := writeWithMoegrid(t, dir, tc.typ)
			for name, typ := range fileTypes(t, path) {
				want := tc.matrix
				if strings.HasSuffix(name, "norm.weight") || strings.HasSuffix(name, "ffn_gate_inp.weight") {
					want = gguf.TypeF32
				}
				if typ != want {
					t.Errorf("%s is %s, want %s", name, typ, want)
				}
			}
			g := loadWhole(t, path)
			logits, routes := run(t, g.m, g.ex, ggufPrompt)
			if tc.matrix == gguf.TypeBF16 {
				if d := maxDiff(t, logits, wantLogits); d > 1e-5 {
					t.Errorf("logits differ from the safetensors model's by %g", d)
				}
				if diff := cmp.Diff(wantRoutes, routes, cmpRouteExperts); diff != "" {
					t.Errorf("expert choices differ:\n%s", diff)
				}
			}
			ck, err := gguf.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer ck.Close()
			ft, err := ck.Metadata().Uint("general.file_type")
			if want := map[gguf.TensorType]uint64{gguf.TypeBF16: 32, gguf.TypeF16: 1}[tc.matrix]; err != nil || ft != want {
				t.Errorf("general.file_type = %d (%v), want %d", ft, err, want)
			}
		})
	}
}

// moegrid's Q8_0 file holds the very bytes of the test's own converter
// (which quantizes every matrix but the router), and its logits are those
// of the model of the dequantized weights, written independently.
func TestWriteGGUFQ8_0(t *testing.T) {
	dir := tinyDir(t)
	path, notices := writeWithMoegrid(t, dir, "q8_0")
	if len(notices) != 0 {
		t.Errorf("notices %q, want none", notices)
	}
	other := writeGGUF(t, dir, ggufOptions{format: kernel.Q8_0})
	mine, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	theirs, err := gguf.Open(other)
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Close()
	if got, want := len(mine.Names()), len(theirs.Names()); got != want {
		t.Errorf("%d tensors, want %d", got, want)
	}
	for _, name := range theirs.Names() {
		a, err := mine.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		b, err := theirs.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		if a.Type != b.Type || !slices.Equal(a.Shape, b.Shape) || !bytes.Equal(a.Data, b.Data) {
			t.Errorf("%s: %s %v differs from the reference's %s %v", name, a.Type, a.Shape, b.Type, b.Shape)
		}
	}
	for key, want := range map[string]uint64{"general.file_type": 7, "general.quantization_version": 2, "llama.vocab_size": 32000, "llama.expert_count": 8} {
		if got, err := mine.Metadata().Uint(key); err != nil || got != want {
			t.Errorf("%s = %d (%v), want %d", key, got, err, want)
		}
	}

	q := loadWhole(t, path)
	ref := loadWhole(t, writeGGUF(t, dir, ggufOptions{format: kernel.Q8_0, dequantized: true}))
	compareToReference(t, q, ref)
}

func compareToReference(t *testing.T, q, ref loaded) {
	t.Helper()
	logits, routes := run(t, q.m, q.ex, ggufPrompt)
	wantLogits, wantRoutes := run(t, ref.m, ref.ex, ggufPrompt)
	if d := maxDiff(t, logits, wantLogits); d > 1e-3 {
		t.Errorf("logits differ from the dequantized model's by %g", d)
	} else {
		t.Logf("logits within %g of the dequantized model's", d)
	}
	if diff := cmp.Diff(wantRoutes, routes, cmpRouteExperts); diff != "" {
		t.Errorf("expert choices differ:\n%s", diff)
	}
	if got, want := greedy(t, q, ggufPrompt, 8), greedy(t, ref, ggufPrompt, 8); !slices.Equal(got, want) {
		t.Errorf("greedy tokens %v, dequantized model %v", got, want)
	}
}

// Each quantization gives the tensors llama-quantize's rules (or the one
// type asked for) give them, falls back to Q8_0 where the tiny model's
// 128-value rows fit no K-quant, says so, and runs as the model of its
// dequantized weights.
func TestWriteGGUFQuantized(t *testing.T) {
	dir := tinyDir(t)
	const (
		q8, q4, q4k, q5k, q6k, f32 = gguf.TypeQ8_0, gguf.TypeQ4_0, gguf.TypeQ4_K, gguf.TypeQ5_K, gguf.TypeQ6_K, gguf.TypeF32
	)
	for _, tc := range []struct {
		typ      string
		fileType uint64
		// want are the types of some tensors; 128-value rows are those
		// of token_embd, output, attn_q/k/v, ffn_gate and ffn_up, and
		// ffn_down's are 256 values.
		want      map[string]gguf.TensorType
		fallbacks int
	}{
		{"q4_0", 2, map[string]gguf.TensorType{
			// llama-quantize: Q6_K for the output (here Q8_0, as its rows
			// do not fit), Q8_0 for attn_k and attn_v of eight experts.
			"token_embd.weight": q4, "output.weight": q8, "blk.0.attn_q.weight": q4, "blk.0.attn_v.weight": q8,
			"blk.1.ffn_down_exps.weight": q4, "blk.0.ffn_gate_inp.weight": f32, "output_norm.weight": f32,
		}, 1},
		{"q6_k", 18, map[string]gguf.TensorType{
			"token_embd.weight": q8, "blk.0.attn_q.weight": q8, "blk.0.ffn_down_exps.weight": q6k, "blk.1.ffn_up_exps.weight": q8,
		}, 10},
		{"q4_k", 15, map[string]gguf.TensorType{
			"output.weight": q8, "blk.0.attn_v.weight": q8, "blk.0.ffn_down_exps.weight": q4k, "blk.1.ffn_down_exps.weight": q4k,
		}, 14},
		{"q5_k", 17, map[string]gguf.TensorType{"blk.1.ffn_down_exps.weight": q5k, "blk.1.ffn_gate_inp.weight": f32}, 14},
		{"q4_k_m", 15, map[string]gguf.TensorType{
			// Of two layers, the last has more bits: Q6_K ffn_down.
			"blk.0.ffn_down_exps.weight": q4k, "blk.1.ffn_down_exps.weight": q6k, "blk.1.attn_v.weight": q8,
			"blk.0.attn_output.weight": q8, "blk.0.attn_norm.weight": f32,
		}, 10},
		{"q5_k_m", 17, map[string]gguf.TensorType{"blk.0.ffn_down_exps.weight": q5k, "blk.1.ffn_down_exps.weight": q6k}, 10},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			path, notices := writeWithMoegrid(t, dir, tc.typ)
			types := fileTypes(t, path)
			for name, want := range tc.want {
				if types[name] != want {
					t.Errorf("%s is %s, want %s", name, types[name], want)
				}
			}
			if len(notices) != tc.fallbacks {
				t.Errorf("%d notices, want %d: %q", len(notices), tc.fallbacks, notices)
			}
			for _, n := range notices {
				if !strings.Contains(n, "rows of 128 values are not a multiple of") || !strings.Contains(n, "stored as Q8_0") {
					t.Errorf("notice %q does not name the rows and the fallback", n)
				}
			}
			ck, err := gguf.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			ft, err := ck.Metadata().Uint("general.file_type")
			ck.Close()
			if err != nil || ft != tc.fileType {
				t.Errorf("general.file_type = %d (%v), want %d", ft, err, tc.fileType)
			}
			compareToReference(t, loadWhole(t, path), loadWhole(t, dequantizedFile(t, path)))
		})
	}
}

// Rows of no multiple of 32 values fall back to F16: here ffn_down's, of
// an 80-wide intermediate layer.
func TestWriteGGUFF16Fallback(t *testing.T) {
	dir := t.TempDir()
	odd := synth.Preset{Name: "odd", Hidden: 128, Layers: 1, Heads: 4, KVHeads: 2, Intermediate: 80}
	if err := synth.Write(dir, synth.Options{Preset: odd, Seed: 3, DType: safetensors.F32, Shards: 1}); err != nil {
		t.Fatal(err)
	}
	path, notices := writeWithMoegrid(t, dir, "q8_0")
	want := []string{"blk.0.ffn_down_exps.weight: rows of 80 values are not a multiple of Q8_0's 32-value blocks; stored as F16"}
	if !slices.Equal(notices, want) {
		t.Errorf("notices %q, want %q", notices, want)
	}
	if typ := fileTypes(t, path)["blk.0.ffn_down_exps.weight"]; typ != gguf.TypeF16 {
		t.Errorf("ffn_down is %s, want F16", typ)
	}
	compareToReference(t, loadWhole(t, path), loadWhole(t, dequantizedFile(t, path)))
}

func TestWriteGGUFErrors(t *testing.T) {
	dir := tinyDir(t)
	noTokenizer := withConfig(t, dir, func(map[string]any) {})
	if err := os.Remove(filepath.Join(noTokenizer, "tokenizer.json")); err != nil {
		t.Fatal(err)
	}
	gguf32, _ := writeWithMoegrid(t, dir, "")
	for _, tc := range []struct {
		name, dir, typ string
		want           string
		is             error
	}{
		{"unknown type", dir, "q3_k", `GGUF type "q3_k": want one of q8_0, q4_0`, nil},
		{"GGUF input", gguf32, "q8_0", "is already a GGUF file", nil},
		{"no tokenizer", noTokenizer, "q8_0", "a GGUF file carries its tokenizer", os.ErrNotExist},
		{"vocabulary mismatch", withConfig(t, dir, func(c map[string]any) { c["vocab_size"] = 32001 }), "", "tokenizer.json has 32000 pieces but vocab_size is 32001", model.ErrConfig},
		{"intermediate size mismatch", withConfig(t, dir, func(c map[string]any) { c["intermediate_size"] = 512 }), "q8_0", "experts.0.w1.weight has shape [256 128], want [512 128]", model.ErrWeights},
		{"missing directory", filepath.Join(t.TempDir(), "none"), "", "read config", os.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.gguf")
			_, err := model.WriteGGUF(context.Background(), tc.dir, out, model.GGUFWriteOptions{Type: tc.typ})
			if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Fatalf("error %v, want one containing %q (is %v)", err, tc.want, tc.is)
			}
			if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 0 {
				t.Errorf("left %d files behind", len(entries))
			}
		})
	}
}

// A cancelled context stops the conversion and leaves no file.
func TestWriteGGUFCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out := filepath.Join(t.TempDir(), "out.gguf")
	if _, err := model.WriteGGUF(ctx, tinyDir(t), out, model.GGUFWriteOptions{Type: "q8_0"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 0 {
		t.Errorf("left %d files behind", len(entries))
	}
}

// With MOEGRID_LLAMA_QUANTIZE naming llama.cpp's llama-quantize (commit
// c392e50), each quantization of a model whose rows fit every block size
// is, byte for byte, the file llama-quantize makes of the F32 conversion:
//
//	MOEGRID_LLAMA_QUANTIZE=/work/llama.cpp/build/bin/llama-quantize go test -run TestWriteGGUFLlamaQuantize ./model/
func TestWriteGGUFLlamaQuantize(t *testing.T) {
	tool := os.Getenv("MOEGRID_LLAMA_QUANTIZE")
	if tool == "" {
		t.Skip("MOEGRID_LLAMA_QUANTIZE is not set")
	}
	dir := t.TempDir()
	p := synth.Preset{Name: "fit", Hidden: 256, Layers: 3, Heads: 4, KVHeads: 2, Intermediate: 512}
	if err := synth.Write(dir, synth.Options{Preset: p, Seed: 7, DType: safetensors.F32, Shards: 1}); err != nil {
		t.Fatal(err)
	}
	src, _ := writeWithMoegrid(t, dir, "f32")
	for _, typ := range []string{"q8_0", "q4_0", "q6_k", "q4_k_m", "q5_k_m"} {
		t.Run(typ, func(t *testing.T) {
			mine, notices := writeWithMoegrid(t, dir, typ)
			if len(notices) != 0 {
				t.Errorf("notices %q", notices)
			}
			theirs := filepath.Join(t.TempDir(), "llama-quantize.gguf")
			if out, err := exec.Command(tool, src, theirs, strings.ToUpper(typ)).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", tool, err, out)
			}
			a, err := os.ReadFile(mine)
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(theirs)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(a, b) {
				t.Errorf("moegrid's %s file (%d bytes) differs from llama-quantize's (%d bytes)", typ, len(a), len(b))
			}
		})
	}
}
