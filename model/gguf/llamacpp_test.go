package gguf_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"os"
	"testing"

	"github.com/moegrid/moegrid/model/gguf"
	"github.com/moegrid/moegrid/model/kernel"
)

// testdata/llama-quantize-q4_k_m.gguf was written by llama.cpp's
// llama-quantize (commit c392e50, built with -DGGML_NATIVE=ON) from the
// F32 model quantizeSource describes, itself written by this package:
//
//	MOEGRID_GGUF_SOURCE=/tmp/src.gguf go test -run TestLlamaQuantize ./model/gguf/
//	llama-quantize /tmp/src.gguf testdata/llama-quantize-q4_k_m.gguf Q4_K_M
//
// so it checks, byte for byte, that llama.cpp's tool reads what moegrid
// writes, that moegrid reads what the tool writes, and that moegrid's
// quantizers write what it does, for the Q4_K and Q6_K tensors of a
// Q4_K_M mixture. (Q8_0 and Q4_0 files of the tool, too large to commit,
// matched the same way.)

// quantizeSource is a one-layer, two-expert llama-architecture model of
// F32 weights drawn from a fixed generator (its own, so that the values
// never depend on the Go release), with a vocabulary of the specials and
// byte pieces.
func quantizeSource(t *testing.T) ([]gguf.KV, []gguf.Tensor) {
	t.Helper()
	const H, F, E = 256, 256, 2
	tokens := []string{"<unk>", "<s>", "</s>"}
	for b := range 256 {
		tokens = append(tokens, fmt.Sprintf("<0x%02X>", b))
	}
	tokens = append(tokens, "▁a")
	V := uint64(len(tokens))
	scores := make([]float32, V)
	types := make([]int32, V)
	// llama_token_type: unknown 2, control 3, byte 6, normal 1.
	types[0], types[1], types[2] = 2, 3, 3
	for i := 3; i < len(types); i++ {
		types[i] = 6
	}
	types[len(types)-1] = 1
	arr := func(v any) gguf.Value {
		a, err := gguf.ArrayOf(v)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	p := gguf.LlamaParams{Architecture: "llama", ContextLength: 128, EmbeddingLength: H, FeedForwardLength: F,
		BlockCount: 1, HeadCount: 4, HeadCountKV: 2, HeadDim: 64, ExpertCount: E, ExpertUsedCount: 2,
		RMSNormEps: 1e-5, RopeFreqBase: 1e6}
	meta := append(p.Metadata(),
		gguf.KV{Key: "general.file_type", Value: gguf.Uint32(0)},
		gguf.KV{Key: "tokenizer.ggml.model", Value: gguf.String("llama")},
		gguf.KV{Key: "tokenizer.ggml.tokens", Value: arr(tokens)},
		gguf.KV{Key: "tokenizer.ggml.scores", Value: arr(scores)},
		gguf.KV{Key: "tokenizer.ggml.token_type", Value: arr(types)},
		gguf.KV{Key: "tokenizer.ggml.bos_token_id", Value: gguf.Uint32(1)},
		gguf.KV{Key: "tokenizer.ggml.eos_token_id", Value: gguf.Uint32(2)},
	)
	state := uint64(0x9e3779b97f4a7c15)
	// next is a value in [-0.1, 0.1) from a 64-bit xorshift-multiply
	// generator: fixed, unlike math/rand's derived distributions.
	next := func() float32 {
		state ^= state >> 12
		state ^= state << 25
		state ^= state >> 27
		hi, _ := bits.Mul64(state, 0x2545f4914f6cdd1d)
		return float32(int64(hi>>11)-1<<52) / (1 << 52) * 0.1
	}
	var ts []gguf.Tensor
	add := func(name string, shape ...uint64) {
		n := uint64(1)
		for _, d := range shape {
			n *= d
		}
		b := make([]byte, 4*n)
		for i := range n {
			v := next()
			if len(shape) == 1 {
				v += 1
			}
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
		}
		ts = append(ts, gguf.Tensor{TensorInfo: gguf.TensorInfo{Name: name, Type: gguf.TypeF32, Shape: shape}, Data: b})
	}
	add("token_embd.weight", H, V)
	add("output_norm.weight", H)
	add("output.weight", H, V)
	add("blk.0.attn_norm.weight", H)
	add("blk.0.attn_q.weight", H, H)
	add("blk.0.attn_k.weight", H, H/2)
	add("blk.0.attn_v.weight", H, H/2)
	add("blk.0.attn_output.weight", H, H)
	add("blk.0.ffn_norm.weight", H)
	add("blk.0.ffn_gate_inp.weight", H, E)
	add("blk.0.ffn_gate_exps.weight", H, F, E)
	add("blk.0.ffn_down_exps.weight", F, H, E)
	add("blk.0.ffn_up_exps.weight", H, F, E)
	return meta, ts
}

func TestLlamaQuantize(t *testing.T) {
	meta, src := quantizeSource(t)
	if path := os.Getenv("MOEGRID_GGUF_SOURCE"); path != "" {
		if err := gguf.WriteFile(path, meta, src); err != nil {
			t.Fatal(err)
		}
		t.Skipf("wrote %s", path)
	}
	for _, tc := range []struct {
		file  string
		types map[gguf.TensorType]bool
	}{
		{"testdata/llama-quantize-q4_k_m.gguf", map[gguf.TensorType]bool{gguf.TypeQ4_K: true, gguf.TypeQ6_K: true, gguf.TypeF32: true}},
	} {
		c, err := gguf.Open(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[gguf.TensorType]bool{}
		for _, s := range src {
			q, err := c.Tensor(s.Name)
			if err != nil {
				t.Fatalf("%s: %v", tc.file, err)
			}
			seen[q.Type] = true
			x, err := s.Float32s()
			if err != nil {
				t.Fatal(err)
			}
			f, err := q.Format()
			if err != nil {
				t.Fatalf("%s: %v", tc.file, err)
			}
			mine, err := kernel.Quantize(f, len(x)/int(s.Shape[0]), int(s.Shape[0]), x)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(mine, q.Data) {
				t.Errorf("%s: %s: moegrid's %s differs from llama-quantize's", tc.file, s.Name, q.Type)
			}
		}
		for typ := range tc.types {
			if !seen[typ] {
				t.Errorf("%s has no %s tensor", tc.file, typ)
			}
		}
		c.Close()
	}
}
