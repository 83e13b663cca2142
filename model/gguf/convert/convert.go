// Package convert writes a Hugging Face Mixtral checkpoint (a directory of
// config.json, tokenizer.json and safetensors) as one GGUF file in
// llama.cpp's layout: architecture "llama" with experts, GGML tensor
// names, each layer's experts stacked in ffn_gate_exps, ffn_down_exps and
// ffn_up_exps, the rows of q and k in GGML's RoPE order, and the tokenizer
// as tokenizer.ggml.* metadata, so that llama.cpp and moegrid both load
// it. Weights keep their float type or are quantized under a
// [gguf.Scheme], with the types and bytes llama-quantize would give them.
package convert

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/gguf"
	"github.com/moegrid/moegrid/model/kernel"
	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/tokenizer"
)

// ErrUnsupported reports a checkpoint that GGUF's llama architecture
// cannot express, such as one with sliding-window attention.
var ErrUnsupported = errors.New("convert: unsupported checkpoint")

// Options select what Write produces.
type Options struct {
	// Scheme quantizes the weights; empty keeps each weight's float
	// type (F32, BF16 or F16), as `moegrid model convert` does.
	Scheme gguf.Scheme
	// Name is general.name; empty uses the checkpoint directory's name.
	Name string
}

// Stats describes a written file.
type Stats struct {
	Tensors int
	// Bytes is the file's size.
	Bytes int64
	// ByType counts the tensors of each type.
	ByType map[gguf.TensorType]int
}

// source is one GGUF tensor and how to make it: the Hugging Face tensors
// it stacks (one, or one per expert), its type, and the number of heads
// of a q or k weight whose rows go to GGML's RoPE order (0 for others).
type source struct {
	info  gguf.TensorInfo
	from  []string
	heads int
}

// Write converts the checkpoint in dir to the GGUF file out (by way of a
// temporary file renamed into place). It holds one Hugging Face tensor in
// float32 at a time and checks ctx between tensors.
func Write(ctx context.Context, dir, out string, o Options) (Stats, error) {
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		return Stats{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Stats{}, err
	}
	if cfg.SlidingWindow != nil {
		return Stats{}, fmt.Errorf("%w: sliding window of %d (llama.cpp's llama architecture has none)", ErrUnsupported, *cfg.SlidingWindow)
	}
	tok, err := tokenizer.Load(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		return Stats{}, err
	}
	if tok.VocabSize() != cfg.VocabSize {
		return Stats{}, fmt.Errorf("%w: tokenizer has %d pieces, config.json says vocab_size %d", ErrUnsupported, tok.VocabSize(), cfg.VocabSize)
	}
	ck, err := safetensors.OpenCheckpoint(dir, nil)
	if err != nil {
		return Stats{}, err
	}
	defer ck.Close()

	plan, err := planTensors(&cfg, ck, o.Scheme)
	if err != nil {
		return Stats{}, err
	}
	meta, err := metadata(&cfg, tok, dir, o, plan[0].info.Type)
	if err != nil {
		return Stats{}, err
	}
	return write(ctx, out, meta, plan, ck)
}

// metadata is the file's metadata: the model's parameters, its name and
// file type, and the tokenizer.
func metadata(cfg *model.Config, tok *tokenizer.Tokenizer, dir string, o Options, embed gguf.TensorType) ([]gguf.KV, error) {
	p := gguf.LlamaParams{
		Architecture:      "llama",
		ContextLength:     cfg.MaxPositionEmbeddings,
		EmbeddingLength:   cfg.HiddenSize,
		FeedForwardLength: cfg.IntermediateSize,
		BlockCount:        cfg.NumHiddenLayers,
		HeadCount:         cfg.NumAttentionHeads,
		HeadCountKV:       cfg.NumKeyValueHeads,
		HeadDim:           cfg.HeadDim(),
		ExpertCount:       cfg.NumLocalExperts,
		ExpertUsedCount:   cfg.NumExpertsPerTok,
		RMSNormEps:        cfg.RMSNormEps,
		RopeFreqBase:      cfg.RopeTheta,
	}
	name := o.Name
	if name == "" {
		name = filepath.Base(filepath.Clean(dir))
	}
	// llama_ftype: ALL_F32 0, MOSTLY_F16 1, MOSTLY_BF16 32 after the
	// weights' float type (the embedding's), or the scheme's.
	fileType := map[gguf.TensorType]uint32{gguf.TypeF32: 0, gguf.TypeF16: 1, gguf.TypeBF16: 32}[embed]
	if o.Scheme != "" {
		fileType = o.Scheme.FileType()
	}
	meta := append(p.Metadata(),
		gguf.KV{Key: "general.name", Value: gguf.String(name)},
		gguf.KV{Key: "general.file_type", Value: gguf.Uint32(fileType)},
		gguf.KV{Key: "general.quantization_version", Value: gguf.Uint32(2)},
	)
	tmeta, err := tok.GGUFMetadata()
	if err != nil {
		return nil, err
	}
	return append(meta, tmeta...), nil
}

// floatTypes maps a safetensors dtype to the GGUF type that keeps it.
var floatTypes = map[safetensors.DType]gguf.TensorType{
	safetensors.F32:  gguf.TypeF32,
	safetensors.BF16: gguf.TypeBF16,
	safetensors.F16:  gguf.TypeF16,
}

// planTensors lists the file's tensors in llama.cpp's order: the
// embedding, each layer's, the final norm and the output.
func planTensors(cfg *model.Config, ck *safetensors.Checkpoint, scheme gguf.Scheme) ([]source, error) {
	H, F, V, E := uint64(cfg.HiddenSize), uint64(cfg.IntermediateSize), uint64(cfg.VocabSize), cfg.NumLocalExperts
	var plan []source
	var err error
	// add plans name from the Hugging Face tensors from; f32 keeps it in
	// F32 (the norms and the router, as llama.cpp does).
	add := func(name string, shape []uint64, f32 bool, heads int, from ...string) {
		if err != nil {
			return
		}
		t, terr := ck.Tensor(from[0])
		if terr != nil {
			err = terr
			return
		}
		typ, ok := floatTypes[t.DType]
		if !ok {
			err = fmt.Errorf("%w: %s is %s", ErrUnsupported, from[0], t.DType)
			return
		}
		if f32 {
			typ = gguf.TypeF32
		}
		if scheme != "" && !f32 {
			if typ, err = scheme.TensorType(name, shape, typ, cfg.NumHiddenLayers, E); err != nil {
				return
			}
		}
		plan = append(plan, source{info: gguf.TensorInfo{Name: name, Type: typ, Shape: shape}, from: from, heads: heads})
	}
	add("token_embd.weight", []uint64{H, V}, false, 0, model.EmbedTensor)
	for l := range cfg.NumHiddenLayers {
		hf := func(s string) string { return fmt.Sprintf("model.layers.%d.%s", l, s) }
		blk := func(s string) string { return fmt.Sprintf("blk.%d.%s", l, s) }
		q, kv := uint64(cfg.QDim()), uint64(cfg.KVDim())
		add(blk("attn_norm.weight"), []uint64{H}, true, 0, hf("input_layernorm.weight"))
		add(blk("attn_q.weight"), []uint64{H, q}, false, cfg.NumAttentionHeads, hf("self_attn.q_proj.weight"))
		add(blk("attn_k.weight"), []uint64{H, kv}, false, cfg.NumKeyValueHeads, hf("self_attn.k_proj.weight"))
		add(blk("attn_v.weight"), []uint64{H, kv}, false, 0, hf("self_attn.v_proj.weight"))
		add(blk("attn_output.weight"), []uint64{q, H}, false, 0, hf("self_attn.o_proj.weight"))
		add(blk("ffn_norm.weight"), []uint64{H}, true, 0, hf("post_attention_layernorm.weight"))
		add(blk("ffn_gate_inp.weight"), []uint64{H, uint64(E)}, true, 0, hf("block_sparse_moe.gate.weight"))
		for i, kind := range []struct {
			name  string
			shape []uint64
		}{{"ffn_gate_exps.weight", []uint64{H, F, uint64(E)}}, {"ffn_down_exps.weight", []uint64{F, H, uint64(E)}}, {"ffn_up_exps.weight", []uint64{H, F, uint64(E)}}} {
			// ExpertTensors lists w1 (the gate), w2 (down) and w3 (up).
			from := make([]string, E)
			for e := range E {
				from[e] = model.ExpertTensors(l, e)[i]
			}
			add(blk(kind.name), kind.shape, false, 0, from...)
		}
	}
	add("output_norm.weight", []uint64{H}, true, 0, model.NormTensor)
	out := model.LMHeadTensor
	if cfg.TieWordEmbeddings {
		out = model.EmbedTensor
	}
	add("output.weight", []uint64{H, V}, false, 0, out)
	return plan, err
}

// write writes the planned tensors to out.
func write(ctx context.Context, out string, meta []gguf.KV, plan []source, ck *safetensors.Checkpoint) (st Stats, err error) {
	infos := make([]gguf.TensorInfo, len(plan))
	for i, p := range plan {
		infos[i] = p.info
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
	if err != nil {
		return Stats{}, fmt.Errorf("convert: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	w, err := gguf.NewWriter(tmp, meta, infos)
	if err != nil {
		return Stats{}, err
	}
	st.ByType = make(map[gguf.TensorType]int)
	for _, p := range plan {
		if err := ctx.Err(); err != nil {
			return Stats{}, err
		}
		parts := make([][]byte, len(p.from))
		for i, name := range p.from {
			if parts[i], err = tensorBytes(ck, name, p); err != nil {
				return Stats{}, err
			}
		}
		if err := w.WriteTensor(p.info.Name, parts...); err != nil {
			return Stats{}, err
		}
		st.Tensors++
		st.ByType[p.info.Type]++
	}
	if err := w.Close(); err != nil {
		return Stats{}, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return Stats{}, fmt.Errorf("convert: %w", err)
	}
	fi, err := tmp.Stat()
	if err != nil {
		return Stats{}, fmt.Errorf("convert: %w", err)
	}
	st.Bytes = fi.Size()
	if err := tmp.Close(); err != nil {
		return Stats{}, fmt.Errorf("convert: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return Stats{}, fmt.Errorf("convert: %w", err)
	}
	return st, nil
}

// tensorBytes is the Hugging Face tensor name in p's type, its rows in
// GGML's RoPE order if p is a q or k weight.
func tensorBytes(ck *safetensors.Checkpoint, name string, p source) ([]byte, error) {
	t, err := ck.Tensor(name)
	if err != nil {
		return nil, err
	}
	cols := int(p.info.Shape[0])
	if t.NumElements()%cols != 0 || (len(t.Shape) != 1 && t.Shape[len(t.Shape)-1] != cols) {
		return nil, fmt.Errorf("%w: %s has shape %v, want rows of %d", ErrUnsupported, name, t.Shape, cols)
	}
	rows := t.NumElements() / cols
	var data []byte
	if src, ok := floatTypes[t.DType]; ok && src == p.info.Type {
		// The same float type: the mapped bytes as they are.
		data = t.Data
	} else {
		x := make([]float32, t.NumElements())
		if err := t.ToFloat32(x); err != nil {
			return nil, fmt.Errorf("convert: %s: %w", name, err)
		}
		f := kernel.Format(p.info.Type.String())
		if data, err = kernel.Quantize(f, rows, cols, x); err != nil {
			return nil, fmt.Errorf("convert: %s: %w", name, err)
		}
	}
	if p.heads == 0 {
		return data, nil
	}
	rt, err := gguf.RopeToGGUF(gguf.Tensor{
		TensorInfo: gguf.TensorInfo{Name: name, Type: p.info.Type, Shape: []uint64{uint64(cols), uint64(rows)}, Size: uint64(len(data))},
		Data:       data,
	}, p.heads)
	if err != nil {
		return nil, err
	}
	return rt.Data, nil
}
