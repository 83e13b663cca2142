package gguf

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/moegrid/moegrid/model/kernel"
)

// LlamaParams are the hyperparameters of a model of llama.cpp's "llama"
// architecture, which is how llama.cpp stores Mixtral: the metadata keys
// ARCH.embedding_length and so on, ARCH being general.architecture.
type LlamaParams struct {
	Architecture      string
	VocabSize         int
	ContextLength     int
	EmbeddingLength   int // the hidden size
	FeedForwardLength int // an expert's intermediate size
	BlockCount        int // decoder layers
	HeadCount         int
	HeadCountKV       int
	HeadDim           int // ARCH.attention.key_length, or EmbeddingLength / HeadCount
	ExpertCount       int
	ExpertUsedCount   int
	RMSNormEps        float64
	RopeFreqBase      float64
	BOSTokenID        int
	EOSTokenID        int
}

// The metadata keys of LlamaParams that do not depend on the architecture.
const (
	KeyArchitecture = "general.architecture"
	KeyTokens       = "tokenizer.ggml.tokens"
	KeyBOS          = "tokenizer.ggml.bos_token_id"
	KeyEOS          = "tokenizer.ggml.eos_token_id"
)

// defaultRopeFreqBase is llama.cpp's default when ARCH.rope.freq_base is
// absent.
const defaultRopeFreqBase = 10000

// ReadLlamaParams reads a llama-architecture model's hyperparameters. The
// vocabulary size is ARCH.vocab_size or else the number of tokenizer
// pieces; a model without experts has ExpertCount 0.
func ReadLlamaParams(md *Metadata) (LlamaParams, error) {
	arch, err := md.String(KeyArchitecture)
	if err != nil {
		return LlamaParams{}, err
	}
	if arch != "llama" {
		return LlamaParams{}, fmt.Errorf("%w: %s is %q, want \"llama\"", ErrMetadata, KeyArchitecture, arch)
	}
	p := LlamaParams{Architecture: arch, RopeFreqBase: defaultRopeFreqBase}
	ints := []struct {
		key      string
		dst      *int
		optional bool
	}{
		{"context_length", &p.ContextLength, false},
		{"embedding_length", &p.EmbeddingLength, false},
		{"feed_forward_length", &p.FeedForwardLength, false},
		{"block_count", &p.BlockCount, false},
		{"attention.head_count", &p.HeadCount, false},
		{"attention.head_count_kv", &p.HeadCountKV, true},
		{"attention.key_length", &p.HeadDim, true},
		{"expert_count", &p.ExpertCount, true},
		{"expert_used_count", &p.ExpertUsedCount, true},
		{"vocab_size", &p.VocabSize, true},
	}
	for _, f := range ints {
		key := arch + "." + f.key
		v, err := md.Uint(key)
		if f.optional && errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return LlamaParams{}, err
		}
		if v > math.MaxInt32 {
			return LlamaParams{}, fmt.Errorf("%w: %s = %d is out of range", ErrMetadata, key, v)
		}
		*f.dst = int(v)
	}
	if p.RMSNormEps, err = decimalFloat(md, arch+".attention.layer_norm_rms_epsilon"); err != nil {
		return LlamaParams{}, err
	}
	if v, err := decimalFloat(md, arch+".rope.freq_base"); err == nil {
		p.RopeFreqBase = v
	} else if !errors.Is(err, ErrNotFound) {
		return LlamaParams{}, err
	}
	if p.HeadCountKV == 0 {
		p.HeadCountKV = p.HeadCount
	}
	if p.HeadCount <= 0 || p.HeadCountKV <= 0 || p.HeadCount%p.HeadCountKV != 0 {
		return LlamaParams{}, fmt.Errorf("%w: %d attention heads and %d key/value heads", ErrMetadata, p.HeadCount, p.HeadCountKV)
	}
	if p.HeadDim == 0 {
		if p.EmbeddingLength%p.HeadCount != 0 {
			return LlamaParams{}, fmt.Errorf("%w: embedding length %d is not a multiple of %d heads", ErrMetadata, p.EmbeddingLength, p.HeadCount)
		}
		p.HeadDim = p.EmbeddingLength / p.HeadCount
	}
	if p.HeadDim%2 != 0 {
		return LlamaParams{}, fmt.Errorf("%w: odd head dimension %d", ErrMetadata, p.HeadDim)
	}
	if p.VocabSize == 0 {
		tokens, err := md.Strings(KeyTokens)
		if err != nil {
			return LlamaParams{}, fmt.Errorf("no %s.vocab_size: %w", arch, err)
		}
		p.VocabSize = len(tokens)
	}
	for _, id := range []struct {
		key string
		dst *int
	}{{KeyBOS, &p.BOSTokenID}, {KeyEOS, &p.EOSTokenID}} {
		v, err := md.Uint(id.key)
		if err != nil {
			return LlamaParams{}, err
		}
		if v >= uint64(p.VocabSize) {
			return LlamaParams{}, fmt.Errorf("%w: %s %d is not below the vocabulary size %d", ErrMetadata, id.key, v, p.VocabSize)
		}
		*id.dst = int(v)
	}
	return p, nil
}

// decimalFloat reads a float of key. A float32 is taken as the shortest
// decimal that rounds to it: the converter wrote a config's decimal
// (1e-5) as float32, and the float64 nearest that decimal is what the
// Hugging Face config meant.
func decimalFloat(md *Metadata, key string) (float64, error) {
	v, ok := md.Lookup(key)
	if f, is32 := v.v.(float32); ok && is32 {
		return strconv.ParseFloat(strconv.FormatFloat(float64(f), 'g', -1, 32), 64)
	}
	return md.Float(key)
}

// Metadata returns p as the metadata entries llama.cpp reads (the
// tokenizer's ids and vocabulary size excepted: they belong with the
// tokenizer's entries).
func (p LlamaParams) Metadata() []KV {
	a := p.Architecture + "."
	return []KV{
		{KeyArchitecture, String(p.Architecture)},
		{a + "context_length", Uint32(uint32(p.ContextLength))},
		{a + "embedding_length", Uint32(uint32(p.EmbeddingLength))},
		{a + "feed_forward_length", Uint32(uint32(p.FeedForwardLength))},
		{a + "block_count", Uint32(uint32(p.BlockCount))},
		{a + "attention.head_count", Uint32(uint32(p.HeadCount))},
		{a + "attention.head_count_kv", Uint32(uint32(p.HeadCountKV))},
		{a + "rope.dimension_count", Uint32(uint32(p.HeadDim))},
		{a + "attention.layer_norm_rms_epsilon", Float32(float32(p.RMSNormEps))},
		{a + "rope.freq_base", Float32(float32(p.RopeFreqBase))},
		{a + "expert_count", Uint32(uint32(p.ExpertCount))},
		{a + "expert_used_count", Uint32(uint32(p.ExpertUsedCount))},
	}
}

// A Hugging Face Mixtral tensor and where llama.cpp keeps it.
var hfToGGUF = map[string]string{
	"model.embed_tokens.weight": "token_embd.weight",
	"model.norm.weight":         "output_norm.weight",
	"lm_head.weight":            "output.weight",
}

var layerHFToGGUF = map[string]string{
	"input_layernorm.weight":          "attn_norm.weight",
	"post_attention_layernorm.weight": "ffn_norm.weight",
	"self_attn.q_proj.weight":         "attn_q.weight",
	"self_attn.k_proj.weight":         "attn_k.weight",
	"self_attn.v_proj.weight":         "attn_v.weight",
	"self_attn.o_proj.weight":         "attn_output.weight",
	"block_sparse_moe.gate.weight":    "ffn_gate_inp.weight",
}

// The experts' projections: w1 is the gate, w3 the up and w2 the down
// projection.
var expertHFToGGUF = map[string]string{"w1.weight": "ffn_gate", "w2.weight": "ffn_down", "w3.weight": "ffn_up"}

// GGUFName says where llama.cpp stores the Hugging Face Mixtral tensor
// hfName: in the GGUF tensor name, and for an expert's projection at index
// expert of the stacked tensor name (BLK.ffn_gate_exps.weight and so on;
// expert is -1 for every other tensor). rope reports a q_proj or k_proj
// weight, whose rows llama.cpp stores in GGML's RoPE layout
// ([RopeToGGUF]).
func GGUFName(hfName string) (name string, expert int, rope bool, err error) {
	if n, ok := hfToGGUF[hfName]; ok {
		return n, -1, false, nil
	}
	rest, ok := strings.CutPrefix(hfName, "model.layers.")
	l, rest, ok2 := strings.Cut(rest, ".")
	layer, lok := index(l)
	if !ok || !ok2 || !lok {
		return "", 0, false, fmt.Errorf("%w: no GGUF tensor for %q", ErrNotFound, hfName)
	}
	if n, ok := layerHFToGGUF[rest]; ok {
		return fmt.Sprintf("blk.%d.%s", layer, n), -1, strings.HasSuffix(rest, "q_proj.weight") || strings.HasSuffix(rest, "k_proj.weight"), nil
	}
	if rest, ok := strings.CutPrefix(rest, "block_sparse_moe.experts."); ok {
		e, w, _ := strings.Cut(rest, ".")
		expert, eok := index(e)
		if n, ok := expertHFToGGUF[w]; ok && eok {
			return fmt.Sprintf("blk.%d.%s_exps.weight", layer, n), expert, false, nil
		}
	}
	return "", 0, false, fmt.Errorf("%w: no GGUF tensor for %q", ErrNotFound, hfName)
}

// index parses a module index written as llama.cpp and transformers write
// them: decimal, no sign or leading zeros.
func index(s string) (int, bool) {
	n, err := strconv.Atoi(s)
	return n, err == nil && n >= 0 && strconv.Itoa(n) == s
}

// HFTensor returns the tensor a Hugging Face Mixtral checkpoint calls
// hfName from a llama-architecture GGUF checkpoint, in Hugging Face
// semantics: an expert's projection is its slice of the stacked
// BLK.ffn_*_exps tensor (a view of its byte range) or, in the older layout,
// the per-expert BLK.ffn_*.E tensor; q_proj and k_proj come back with
// their rows reordered from GGML's RoPE layout (a copy). The tensor's
// Shape stays in GGML order ({cols, rows}); [Tensor.Matrix] views it.
func (c *Checkpoint) HFTensor(hfName string) (Tensor, error) {
	name, expert, rope, err := GGUFName(hfName)
	if err != nil {
		return Tensor{}, err
	}
	if expert >= 0 {
		stacked, err := c.Tensor(name)
		if errors.Is(err, ErrNotFound) {
			// The older layout: one tensor per expert.
			per := strings.Replace(name, "_exps.weight", "."+strconv.Itoa(expert)+".weight", 1)
			t, err := c.Tensor(per)
			if err != nil {
				return Tensor{}, fmt.Errorf("%s: %w", hfName, err)
			}
			return t, nil
		}
		if err != nil {
			return Tensor{}, err
		}
		if len(stacked.Shape) != 3 {
			return Tensor{}, fmt.Errorf("%w: %s has shape %v, want {cols, rows, experts}", ErrTensor, name, stacked.Shape)
		}
		return stacked.Slice(expert)
	}
	t, err := c.Tensor(name)
	if err != nil {
		return Tensor{}, fmt.Errorf("%s: %w", hfName, err)
	}
	if !rope {
		return t, nil
	}
	heads, err := c.ropeHeads(name)
	if err != nil {
		return Tensor{}, err
	}
	return RopeFromGGUF(t, heads)
}

// ropeHeads is the number of heads whose rows the q or k weight name
// holds.
func (c *Checkpoint) ropeHeads(name string) (int, error) {
	p, err := ReadLlamaParams(c.Metadata())
	if err != nil {
		return 0, err
	}
	if strings.HasSuffix(name, "attn_k.weight") {
		return p.HeadCountKV, nil
	}
	return p.HeadCount, nil
}

// ggufRopeRow is the GGML row of Hugging Face row r of a q or k weight
// whose heads have dim rows each. Hugging Face's rotary embedding pairs
// row i of a head with row i + dim/2; GGML's pairs rows 2i and 2i+1, so
// llama.cpp's converter interleaves each head's two halves.
func ggufRopeRow(r, dim int) int {
	h, rem := r/dim, r%dim
	half, i := rem/(dim/2), rem%(dim/2)
	return h*dim + 2*i + half
}

// RopeFromGGUF returns a copy of the 2-D q or k weight t, stored in GGML's
// RoPE layout with heads heads, with its rows in Hugging Face order.
func RopeFromGGUF(t Tensor, heads int) (Tensor, error) { return permuteRope(t, heads, false) }

// RopeToGGUF returns a copy of the 2-D q or k weight t, rows in Hugging
// Face order with heads heads, with its rows in GGML's RoPE layout, as
// llama.cpp's converter writes them.
func RopeToGGUF(t Tensor, heads int) (Tensor, error) { return permuteRope(t, heads, true) }

func permuteRope(t Tensor, heads int, toGGUF bool) (Tensor, error) {
	if len(t.Shape) != 2 || heads <= 0 || t.Shape[1]%uint64(heads) != 0 || t.Shape[1]/uint64(heads)%2 != 0 {
		return Tensor{}, fmt.Errorf("%w: cannot reorder the rows of %q, shape %v, as %d heads", ErrTensor, t.Name, t.Shape, heads)
	}
	rows := int(t.Shape[1])
	dim := rows / heads
	rowBytes := int(t.Size) / rows
	out := t
	out.Data = make([]byte, len(t.Data))
	for r := range rows {
		g := ggufRopeRow(r, dim)
		src, dst := g, r
		if toGGUF {
			src, dst = r, g
		}
		copy(out.Data[dst*rowBytes:(dst+1)*rowBytes], t.Data[src*rowBytes:(src+1)*rowBytes])
	}
	return out, nil
}

// Float32s returns the values of t, dequantized or widened exactly, in
// storage order.
func (t Tensor) Float32s() ([]float32, error) {
	f, err := t.Format()
	if err != nil {
		return nil, err
	}
	n := t.Elements()
	if n > math.MaxInt32 {
		return nil, fmt.Errorf("%w: tensor %q of %d values is too large to widen", ErrTensor, t.Name, n)
	}
	m, err := kernel.NewMatrix(f, 1, int(n), t.Data)
	if err != nil {
		return nil, fmt.Errorf("gguf: tensor %q: %w", t.Name, err)
	}
	out := make([]float32, n)
	m.Row(out, 0)
	return out, nil
}
