package model

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/moegrid/moegrid/model/gguf"
	"github.com/moegrid/moegrid/model/kernel"
	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/tokenizer"
)

// GGUFWriteOptions say how [WriteGGUF] stores a checkpoint's weights.
type GGUFWriteOptions struct {
	// Type is the storage of the matrices (the norms and the router stay
	// F32 whatever it says, as llama.cpp's converter keeps them):
	//
	//   - "" keeps each tensor's dtype (F32, BF16 or F16);
	//   - "f32", "f16", "bf16" convert every matrix to that float type;
	//   - "q8_0", "q4_0", "q6_k", "q4_k_m" and "q5_k_m" quantize as
	//     llama-quantize's file types of those names do, with its
	//     per-tensor exceptions ([gguf.Scheme.TensorType]): Q4_K_M is Q4_K
	//     with Q6_K for output.weight and for attn_v and ffn_down in the
	//     first and last eighths of the layers and every third between,
	//     Q8_0 for attn_k and attn_v of an eight-expert model, Q5_K for
	//     its attn_output;
	//   - "q4_k" and "q5_k" store every matrix in that one type.
	//
	// A matrix whose rows are not a whole number of its type's blocks is
	// stored as Q8_0 when they are a multiple of 32 values, else as F16.
	Type string
	// Notice, when not nil, is told of each such fallback and of each
	// setting of the checkpoint that the GGUF file cannot carry.
	Notice func(msg string)
}

// A ggufPolicy decides each tensor's type for one GGUFWriteOptions.Type.
type ggufPolicy struct {
	keep     bool            // keep the source dtype
	uniform  gguf.TensorType // else this type for every matrix,
	scheme   gguf.Scheme     // or else llama-quantize's rules for this scheme
	fileType uint32          // general.file_type, llama.cpp's llama_ftype
	quant    bool
}

// ggufPolicies are the policies by GGUFWriteOptions.Type. A uniform K-quant
// has no llama_ftype of its own; it is given the one llama.cpp guesses for
// a file mostly of that type (Q4_K_M, Q5_K_M).
var ggufPolicies = map[string]ggufPolicy{
	"":       {keep: true},
	"f32":    {uniform: gguf.TypeF32, fileType: 0},
	"f16":    {uniform: gguf.TypeF16, fileType: 1},
	"bf16":   {uniform: gguf.TypeBF16, fileType: 32},
	"q8_0":   {scheme: gguf.SchemeQ8_0, quant: true},
	"q4_0":   {scheme: gguf.SchemeQ4_0, quant: true},
	"q6_k":   {scheme: gguf.SchemeQ6_K, quant: true},
	"q4_k_m": {scheme: gguf.SchemeQ4_K_M, quant: true},
	"q5_k_m": {scheme: gguf.SchemeQ5_K_M, quant: true},
	"q4_k":   {uniform: gguf.TypeQ4_K, fileType: 15, quant: true},
	"q5_k":   {uniform: gguf.TypeQ5_K, fileType: 17, quant: true},
}

// GGUFWriteTypes lists the values GGUFWriteOptions.Type may take that
// quantize, and then those that do not ("" aside).
var GGUFWriteTypes = []string{"q8_0", "q4_0", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m", "f32", "f16", "bf16"}

// IsQuantizedGGUFType reports whether typ, a GGUFWriteOptions.Type,
// quantizes.
func IsQuantizedGGUFType(typ string) bool { return ggufPolicies[strings.ToLower(typ)].quant }

// ggufSource is one tensor of the file to write: its GGML name and shape,
// its type, and the Hugging Face tensors it is made of (one, or one per
// expert, stacked).
type ggufSource struct {
	info       gguf.TensorInfo
	hf         []string
	rows, cols int // rows 0: a vector
	ropeHeads  int // q and k: heads whose rows move to GGML's RoPE layout
}

// WriteGGUF writes the Hugging Face Mixtral checkpoint in dir
// (config.json, tokenizer.json and safetensors files) as a GGUF file at
// path, laid out as llama.cpp's converter writes Mixtral: architecture
// "llama" with llama.* hyperparameters, the tokenizer as tokenizer.ggml.*
// metadata, GGML tensor names with the experts stacked in
// blk.N.ffn_*_exps, and the rows of q and k in GGML's interleaved RoPE
// order. It returns the tensors written.
//
// Tensors are converted one at a time, each expert of a stacked tensor
// separately, so besides the mapped checkpoint the process holds at most
// one output tensor and one expert's float32 values; a tensor kept in its
// dtype is written straight from the mapping. The file appears at path
// only when complete.
func WriteGGUF(ctx context.Context, dir, path string, o GGUFWriteOptions) ([]gguf.TensorInfo, error) {
	pol, ok := ggufPolicies[strings.ToLower(o.Type)]
	if !ok {
		return nil, fmt.Errorf("model: GGUF type %q: want one of %s, or none to keep each tensor's dtype", o.Type, strings.Join(GGUFWriteTypes, ", "))
	}
	notice := o.Notice
	if notice == nil {
		notice = func(string) {}
	}
	if IsGGUF(dir) {
		return nil, fmt.Errorf("model: %s is already a GGUF file; convert a Hugging Face checkpoint directory", dir)
	}
	cfg, err := LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	tok, err := tokenizer.Load(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		return nil, fmt.Errorf("model: a GGUF file carries its tokenizer: %w", err)
	}
	if tok.VocabSize() != cfg.VocabSize {
		return nil, fmt.Errorf("%w: tokenizer.json has %d pieces but vocab_size is %d; llama.cpp needs one token per embedding row", ErrConfig, tok.VocabSize(), cfg.VocabSize)
	}
	if cfg.SlidingWindow != nil && *cfg.SlidingWindow < cfg.MaxPositionEmbeddings {
		notice(fmt.Sprintf("sliding_window %d is not stored: llama.cpp's llama architecture attends to the whole context", *cfg.SlidingWindow))
	}
	ck, err := safetensors.OpenCheckpoint(dir, nil)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	defer ck.Close()

	sources, err := ggufSources(ck, &cfg, pol, notice)
	if err != nil {
		return nil, err
	}
	meta, err := ggufWriteMetadata(&cfg, tok, pol, sources, filepath.Base(filepath.Clean(dir)))
	if err != nil {
		return nil, err
	}
	infos := make([]gguf.TensorInfo, len(sources))
	for i, s := range sources {
		infos[i] = s.info
	}
	var written []gguf.TensorInfo
	if err := writeGGUFFile(path, meta, infos, func(w *gguf.Writer) error {
		written = w.Tensors()
		for _, s := range sources {
			if err := ctx.Err(); err != nil {
				return err
			}
			parts, err := s.data(ctx, ck)
			if err != nil {
				return err
			}
			if err := w.WriteTensor(s.info.Name, parts...); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("model: write %s: %w", path, err)
	}
	return written, nil
}

// ggufSources lists the tensors of the file with their types.
func ggufSources(ck *safetensors.Checkpoint, c *Config, pol ggufPolicy, notice func(string)) ([]ggufSource, error) {
	H, V, E := c.HiddenSize, c.VocabSize, c.NumLocalExperts
	var out []ggufSource
	add := func(name string, rows, cols, ropeHeads int, hf ...string) error {
		want := []int{cols}
		if rows > 0 {
			want = []int{rows, cols}
		}
		var src gguf.TensorType
		for i, n := range hf {
			t, err := ck.Tensor(n)
			if err != nil {
				return fmt.Errorf("%w: %w", ErrWeights, err)
			}
			if !slices.Equal(t.Shape, want) {
				return fmt.Errorf("%w: %s has shape %v, want %v", ErrWeights, n, t.Shape, want)
			}
			dt, err := hfDType(ck, n)
			if err != nil {
				return err
			}
			if i > 0 && dt != src {
				return fmt.Errorf("%w: %s is %s, unlike %s, of %s", ErrWeights, n, dt, hf[0], src)
			}
			src = dt
		}
		shape := []uint64{uint64(cols)}
		if rows > 0 {
			shape = append(shape, uint64(rows))
		}
		if len(hf) > 1 {
			shape = append(shape, uint64(len(hf)))
		}
		typ, err := pol.typeOf(name, shape, src, c, notice)
		if err != nil {
			return err
		}
		out = append(out, ggufSource{
			info: gguf.TensorInfo{Name: name, Type: typ, Shape: shape},
			hf:   hf, rows: rows, cols: cols, ropeHeads: ropeHeads,
		})
		return nil
	}
	vec := func(name, hf string) error { return add(name, 0, H, 0, hf) }
	if err := add(GGUFEmbedTensor, V, H, 0, EmbedTensor); err != nil {
		return nil, err
	}
	if err := vec(GGUFNormTensor, NormTensor); err != nil {
		return nil, err
	}
	if !c.TieWordEmbeddings {
		if err := add(GGUFOutputTensor, V, H, 0, LMHeadTensor); err != nil {
			return nil, err
		}
	}
	shapes := ggufExpertShapes(c)
	for l := range c.NumHiddenLayers {
		blk := func(kind string) string { return GGUFBlockTensor(l, kind) }
		hf := func(s string) string { return layerTensor(l, s) }
		steps := []func() error{
			func() error { return vec(blk("attn_norm"), hf("input_layernorm.weight")) },
			func() error {
				return add(blk("attn_q"), c.QDim(), H, c.NumAttentionHeads, hf("self_attn.q_proj.weight"))
			},
			func() error {
				return add(blk("attn_k"), c.KVDim(), H, c.NumKeyValueHeads, hf("self_attn.k_proj.weight"))
			},
			func() error { return add(blk("attn_v"), c.KVDim(), H, 0, hf("self_attn.v_proj.weight")) },
			func() error { return add(blk("attn_output"), H, c.QDim(), 0, hf("self_attn.o_proj.weight")) },
			func() error { return vec(blk("ffn_norm"), hf("post_attention_layernorm.weight")) },
			func() error { return add(blk("ffn_gate_inp"), E, H, 0, hf("block_sparse_moe.gate.weight")) },
		}
		for i, kind := range ggufKinds {
			steps = append(steps, func() error {
				names := make([]string, E)
				for e := range E {
					names[e] = ExpertTensors(l, e)[i]
				}
				return add(ggufStacked(l, kind), shapes[i][0], shapes[i][1], 0, names...)
			})
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return nil, err
			}
		}
	}
	// llama-quantize's order: by layer, the tensors outside the layers
	// first, then by name.
	slices.SortStableFunc(out, func(a, b ggufSource) int {
		if c := cmp.Compare(layerOf(a.info.Name), layerOf(b.info.Name)); c != 0 {
			return c
		}
		return strings.Compare(a.info.Name, b.info.Name)
	})
	return out, nil
}

// layerOf is the layer of a blk.N.* tensor name, or -1.
func layerOf(name string) int {
	rest, ok := strings.CutPrefix(name, "blk.")
	n, _, _ := strings.Cut(rest, ".")
	l, lok := moduleIndex(n)
	if !ok || !lok {
		return -1
	}
	return l
}

// hfDType is the GGML type of the Hugging Face tensor name's dtype.
func hfDType(ck *safetensors.Checkpoint, name string) (gguf.TensorType, error) {
	t, err := ck.Tensor(name)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrWeights, err)
	}
	switch t.DType {
	case safetensors.F32:
		return gguf.TypeF32, nil
	case safetensors.BF16:
		return gguf.TypeBF16, nil
	case safetensors.F16:
		return gguf.TypeF16, nil
	}
	return 0, fmt.Errorf("%w: %s is %s; want F32, BF16 or F16", ErrWeights, name, t.DType)
}

// typeOf is the type of the tensor name, of GGML shape shape, whose source
// is of type src.
func (p ggufPolicy) typeOf(name string, shape []uint64, src gguf.TensorType, c *Config, notice func(string)) (gguf.TensorType, error) {
	if len(shape) < 2 || strings.HasSuffix(name, "_norm.weight") || strings.HasSuffix(name, "ffn_gate_inp.weight") {
		return gguf.TypeF32, nil
	}
	if p.keep {
		return src, nil
	}
	want, got := p.uniform, p.uniform
	if p.scheme != "" {
		// Without an output.weight llama-quantize gives token_embd the
		// output's rules, since it serves as the output too.
		rules := name
		if name == GGUFEmbedTensor && c.TieWordEmbeddings {
			rules = GGUFOutputTensor
		}
		// The type the rules give rows that fit every block size: what
		// the scheme wants before any fallback.
		fits := append([]uint64{256}, shape[1:]...)
		var err error
		if want, err = p.scheme.TensorType(rules, fits, gguf.TypeF32, c.NumHiddenLayers, c.NumLocalExperts); err != nil {
			return 0, fmt.Errorf("model: %s: %w", name, err)
		}
		got, err = p.scheme.TensorType(rules, shape, gguf.TypeF32, c.NumHiddenLayers, c.NumLocalExperts)
		if err != nil {
			got = want
		}
	}
	if shape[0]%uint64(got.BlockSize()) != 0 {
		got = gguf.TypeF16
		if shape[0]%32 == 0 {
			got = gguf.TypeQ8_0
		}
	}
	if got != want {
		notice(fmt.Sprintf("%s: rows of %d values are not a multiple of %s's %d-value blocks; stored as %s", name, shape[0], want, want.BlockSize(), got))
	}
	return got, nil
}

// data is the tensor's bytes: views of the checkpoint's mapping when it
// keeps the source's dtype and row order, else converted, one expert at a
// time.
func (s ggufSource) data(ctx context.Context, ck *safetensors.Checkpoint) ([][]byte, error) {
	parts := make([][]byte, len(s.hf))
	rows := max(s.rows, 1)
	for i, name := range s.hf {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t, err := ck.Tensor(name)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrWeights, err)
		}
		src, err := hfDType(ck, name)
		if err != nil {
			return nil, err
		}
		b := t.Data
		if s.ropeHeads > 0 {
			g := gguf.Tensor{TensorInfo: gguf.TensorInfo{Name: name, Type: src, Shape: []uint64{uint64(s.cols), uint64(s.rows)}, Size: uint64(len(b))}, Data: b}
			if g, err = gguf.RopeToGGUF(g, s.ropeHeads); err != nil {
				return nil, err
			}
			b = g.Data
		}
		if src == s.info.Type {
			parts[i] = b
			continue
		}
		x := make([]float32, t.NumElements())
		t.Data = b
		if err := t.ToFloat32(x); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrWeights, name, err)
		}
		if parts[i], err = kernel.Quantize(kernel.Format(s.info.Type.String()), rows, s.cols, x); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrWeights, name, err)
		}
	}
	return parts, nil
}

// ggufWriteMetadata is the file's metadata: the hyperparameters llama.cpp
// reads, the file type, and the tokenizer.
func ggufWriteMetadata(c *Config, tok *tokenizer.Tokenizer, pol ggufPolicy, sources []ggufSource, name string) ([]gguf.KV, error) {
	p := gguf.LlamaParams{
		Architecture:      "llama",
		ContextLength:     c.MaxPositionEmbeddings,
		EmbeddingLength:   c.HiddenSize,
		FeedForwardLength: c.IntermediateSize,
		BlockCount:        c.NumHiddenLayers,
		HeadCount:         c.NumAttentionHeads,
		HeadCountKV:       c.NumKeyValueHeads,
		HeadDim:           c.HeadDim(),
		ExpertCount:       c.NumLocalExperts,
		ExpertUsedCount:   c.NumExpertsPerTok,
		RMSNormEps:        c.RMSNormEps,
		RopeFreqBase:      c.RopeTheta,
	}
	fileType := pol.fileType
	switch {
	case pol.scheme != "":
		fileType = pol.scheme.FileType()
	case pol.keep:
		fileType = keptFileType(sources)
	}
	meta := []gguf.KV{
		{Key: gguf.KeyArchitecture, Value: gguf.String("llama")},
		{Key: "general.name", Value: gguf.String(name)},
	}
	meta = append(meta, p.Metadata()[1:]...)
	meta = append(meta, gguf.KV{Key: "llama.vocab_size", Value: gguf.Uint32(uint32(c.VocabSize))})
	if c.HeadDim() != c.HiddenSize/c.NumAttentionHeads {
		meta = append(meta,
			gguf.KV{Key: "llama.attention.key_length", Value: gguf.Uint32(uint32(c.HeadDim()))},
			gguf.KV{Key: "llama.attention.value_length", Value: gguf.Uint32(uint32(c.HeadDim()))})
	}
	tm, err := tok.GGUFMetadata()
	if err != nil {
		return nil, fmt.Errorf("model: tokenizer: %w", err)
	}
	meta = append(meta, tm...)
	// Last, as llama-quantize writes them: a file quantized here is then
	// byte for byte the one llama-quantize makes of this package's F32,
	// F16 or BF16 conversion. The quantization version is that of GGML's
	// block layouts.
	if pol.quant {
		meta = append(meta, gguf.KV{Key: "general.quantization_version", Value: gguf.Uint32(2)})
	}
	return append(meta, gguf.KV{Key: "general.file_type", Value: gguf.Uint32(fileType)}), nil
}

// keptFileType is the llama_ftype of a file whose matrices keep their
// dtypes: that of the most of them, as llama.cpp guesses it.
func keptFileType(sources []ggufSource) uint32 {
	count := map[gguf.TensorType]int{}
	for _, s := range sources {
		if len(s.info.Shape) >= 2 {
			count[s.info.Type]++
		}
	}
	most := gguf.TypeF32
	for t, n := range count {
		if n > count[most] || (n == count[most] && t < most) {
			most = t
		}
	}
	switch most {
	case gguf.TypeF16:
		return 1
	case gguf.TypeBF16:
		return 32
	}
	return 0
}

// writeGGUFFile writes a GGUF file of meta and tensors at path, the data
// by write, through a temporary file in the same directory renamed into
// place once complete.
func writeGGUFFile(path string, meta []gguf.KV, tensors []gguf.TensorInfo, write func(*gguf.Writer) error) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	w, err := gguf.NewWriter(tmp, meta, tensors)
	if err != nil {
		return err
	}
	if err := write(w); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
