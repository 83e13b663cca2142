package model

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/moegrid/moegrid/model/gguf"
	"github.com/moegrid/moegrid/model/kernel"
	"github.com/moegrid/moegrid/model/tokenizer"
)

// A GGUF checkpoint is one .gguf file, or the parts of a split one
// (NAME-00001-of-0000N.gguf), laid out as llama.cpp writes Mixtral: arch
// "llama" with experts, GGML tensor names, and the rows of q and k
// permuted within each head for GGML's interleaved rotary embedding.
// Everything that takes a checkpoint directory takes such a path too.

// GGUF names of the tensors outside the decoder layers.
const (
	GGUFEmbedTensor  = "token_embd.weight"
	GGUFNormTensor   = "output_norm.weight"
	GGUFOutputTensor = "output.weight"
)

// ggufKinds are the GGML names of an expert's w1, w2 and w3, in that order.
var ggufKinds = [3]string{"ffn_gate", "ffn_down", "ffn_up"}

// IsGGUF reports whether path names a GGUF checkpoint: a file (not a
// directory) whose name ends in .gguf.
func IsGGUF(path string) bool {
	if !strings.EqualFold(filepath.Ext(path), ".gguf") {
		return false
	}
	fi, err := os.Stat(path)
	return err != nil || !fi.IsDir()
}

// LoadTokenizer reads the tokenizer of the checkpoint at path: the
// tokenizer.ggml.* metadata of a GGUF file, or a directory's
// tokenizer.json.
func LoadTokenizer(path string) (*tokenizer.Tokenizer, error) {
	if !IsGGUF(path) {
		return tokenizer.Load(filepath.Join(path, "tokenizer.json"))
	}
	ck, err := gguf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	defer ck.Close()
	tok, err := tokenizer.FromGGUF(ck.Metadata())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return tok, nil
}

// GGUFBlockTensor is the GGML name of a tensor of decoder layer l, such as
// blk.3.attn_q.weight for kind "attn_q".
func GGUFBlockTensor(l int, kind string) string { return fmt.Sprintf("blk.%d.%s.weight", l, kind) }

// ggufStacked and ggufPerExpert are the two names llama.cpp has given an
// expert's weights: one tensor stacking every expert's matrix, and the
// older tensor per expert.
func ggufStacked(l int, kind string) string { return GGUFBlockTensor(l, kind+"_exps") }

func ggufPerExpert(l, e int, kind string) string {
	return GGUFBlockTensor(l, fmt.Sprintf("%s.%d", kind, e))
}

// IsGGUFExpertTensor reports whether name is an expert weight of a GGUF
// checkpoint, stacked (blk.N.ffn_up_exps.weight) or per expert
// (blk.N.ffn_up.E.weight).
func IsGGUFExpertTensor(name string) bool {
	rest, ok := strings.CutPrefix(name, "blk.")
	if !ok {
		return false
	}
	l, rest, ok := strings.Cut(rest, ".")
	if _, lok := moduleIndex(l); !ok || !lok {
		return false
	}
	rest, ok = strings.CutSuffix(rest, ".weight")
	if !ok {
		return false
	}
	for _, kind := range ggufKinds {
		if rest == kind+"_exps" {
			return true
		}
		if e, ok := strings.CutPrefix(rest, kind+"."); ok {
			_, eok := moduleIndex(e)
			return eok
		}
	}
	return false
}

// openGGUF opens the GGUF checkpoint at path and reads its configuration.
func openGGUF(path string) (*gguf.Checkpoint, Config, error) {
	ck, err := gguf.Open(path)
	if err != nil {
		return nil, Config{}, fmt.Errorf("model: %w", err)
	}
	cfg, err := ggufConfig(ck)
	if err != nil {
		ck.Close()
		return nil, Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return ck, cfg, nil
}

// ggufConfig builds the Mixtral configuration that a checkpoint's metadata
// describes, in the keys llama.cpp's converter writes.
func ggufConfig(ck *gguf.Checkpoint) (Config, error) {
	md := ck.Metadata()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...)
	}
	arch, err := md.String("general.architecture")
	if err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if arch != "llama" && arch != "mixtral" {
		return Config{}, bad("general.architecture %q is not supported (want \"llama\" with experts, as llama.cpp writes Mixtral)", arch)
	}
	key := func(k string) string { return arch + "." + k }
	var firstErr error
	// size reads a count; a missing key takes def, or is an error if def
	// is negative.
	size := func(k string, def int) int {
		if firstErr != nil {
			return 0
		}
		v, err := md.Uint(key(k))
		switch {
		case errors.Is(err, gguf.ErrNotFound) && def >= 0:
			return def
		case errors.Is(err, gguf.ErrNotFound) && k == "expert_count":
			firstErr = bad("%s is missing: a dense model, not a mixture of experts", key(k))
		case err != nil:
			firstErr = fmt.Errorf("%w: %w", ErrConfig, err)
		case v > math.MaxInt32:
			firstErr = bad("%s = %d is out of range", key(k), v)
		}
		return int(v)
	}
	// real reads a float; one stored as float32 is taken as the decimal
	// that the writer rounded (1e-05, not 9.99999974e-06), which is what a
	// config.json holds.
	real := func(k string, def float64) float64 {
		if firstErr != nil {
			return 0
		}
		v, ok := md.Lookup(key(k))
		if !ok {
			if def < 0 {
				firstErr = bad("%s is missing", key(k))
			}
			return def
		}
		if f, ok := v.Any().(float32); ok {
			d, _ := strconv.ParseFloat(strconv.FormatFloat(float64(f), 'g', -1, 32), 64)
			return d
		}
		f, err := md.Float(key(k))
		if err != nil {
			firstErr = fmt.Errorf("%w: %w", ErrConfig, err)
		}
		return f
	}
	cfg := DefaultConfig()
	cfg.Architectures = []string{"MixtralForCausalLM"}
	cfg.SlidingWindow = nil
	cfg.TorchDType = ""
	cfg.NumLocalExperts = size("expert_count", -1)
	cfg.NumExpertsPerTok = size("expert_used_count", -1)
	cfg.NumHiddenLayers = size("block_count", -1)
	cfg.HiddenSize = size("embedding_length", -1)
	cfg.IntermediateSize = size("feed_forward_length", -1)
	cfg.NumAttentionHeads = size("attention.head_count", -1)
	cfg.NumKeyValueHeads = size("attention.head_count_kv", cfg.NumAttentionHeads)
	cfg.MaxPositionEmbeddings = size("context_length", -1)
	cfg.RMSNormEps = real("attention.layer_norm_rms_epsilon", -1)
	cfg.RopeTheta = real("rope.freq_base", 10000) // llama.cpp's default
	if firstErr != nil {
		return Config{}, firstErr
	}
	// A layer is nine tensors or more: a count the file cannot hold is
	// refused before anything is sized by it.
	if n := len(ck.Names()); cfg.NumHiddenLayers > n/9 {
		return Config{}, bad("%s %d, but the file holds only %d tensors", key("block_count"), cfg.NumHiddenLayers, n)
	}
	if cfg.NumAttentionHeads > 0 {
		if d := size("attention.key_length", 0); d != 0 && d != cfg.HiddenSize/cfg.NumAttentionHeads {
			cfg.HeadDimension = d
		}
		if v := size("attention.value_length", cfg.HeadDim()); v != cfg.HeadDim() {
			firstErr = bad("%s %d differs from the key length %d", key("attention.value_length"), v, cfg.HeadDim())
		}
		if r := size("rope.dimension_count", cfg.HeadDim()); firstErr == nil && r != cfg.HeadDim() {
			firstErr = bad("%s %d: rotary embedding of part of a %d-wide head is not supported", key("rope.dimension_count"), r, cfg.HeadDim())
		}
	}
	if t, err := md.String(key("rope.scaling.type")); err == nil && t != "none" {
		return Config{}, bad("%s %q is not supported", key("rope.scaling.type"), t)
	}
	if g := size("expert_gating_func", 1); firstErr == nil && g != 1 { // 1 is softmax
		firstErr = bad("%s %d is not supported (want 1, softmax)", key("expert_gating_func"), g)
	}
	if firstErr != nil {
		return Config{}, firstErr
	}

	// The vocabulary is the token list when there is one, else the
	// embedding's rows.
	if tokens, ok := md.Lookup(tokenizer.KeyGGUFTokens); ok {
		a, ok := tokens.Array()
		if !ok {
			return Config{}, bad("%s is not an array", tokenizer.KeyGGUFTokens)
		}
		cfg.VocabSize = a.Len()
	} else if n := size("vocab_size", 0); n > 0 {
		cfg.VocabSize = n
	} else if firstErr == nil {
		info, err := ck.Info(GGUFEmbedTensor)
		if err != nil {
			return Config{}, fmt.Errorf("%w: no %s to give the vocabulary size, and %w", ErrConfig, tokenizer.KeyGGUFTokens, err)
		}
		if len(info.Shape) != 2 || info.Shape[1] > math.MaxInt32 {
			return Config{}, bad("%s has shape %v, want {hidden, vocab}", GGUFEmbedTensor, info.Shape)
		}
		cfg.VocabSize = int(info.Shape[1])
	}
	for _, id := range []struct {
		key string
		dst *int
	}{{tokenizer.KeyGGUFBOS, &cfg.BOSTokenID}, {tokenizer.KeyGGUFEOS, &cfg.EOSTokenID}} {
		v, err := md.Uint(id.key)
		switch {
		case errors.Is(err, gguf.ErrNotFound):
		case err != nil:
			return Config{}, fmt.Errorf("%w: %w", ErrConfig, err)
		case v > math.MaxInt32:
			return Config{}, bad("%s = %d is out of range", id.key, v)
		default:
			*id.dst = int(v)
		}
	}
	if firstErr != nil {
		return Config{}, firstErr
	}
	_, err = ck.Info(GGUFOutputTensor)
	cfg.TieWordEmbeddings = errors.Is(err, gguf.ErrNotFound)
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("config from GGUF metadata: %w", err)
	}
	return cfg, nil
}

// ggufTensor returns the tensor name, checking its GGML shape.
func ggufTensor(ck *gguf.Checkpoint, name string, shape ...uint64) (gguf.Tensor, error) {
	t, err := ck.Tensor(name)
	if err != nil {
		return gguf.Tensor{}, fmt.Errorf("%w: %w", ErrWeights, err)
	}
	if !slices.Equal(t.Shape, shape) {
		return gguf.Tensor{}, fmt.Errorf("%w: %s has GGML shape %v, want %v", ErrWeights, name, t.Shape, shape)
	}
	return t, nil
}

// asMatrix views t as the [rows, cols] matrix it holds.
func asMatrix(t gguf.Tensor) (kernel.Matrix, error) {
	m, err := t.Matrix()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrWeights, err)
	}
	return m, nil
}

// ggufMatrix maps the tensor name, GGML shape {cols, rows}, as a [rows,
// cols] matrix without copying.
func ggufMatrix(ck *gguf.Checkpoint, name string, rows, cols int) (kernel.Matrix, error) {
	t, err := ggufTensor(ck, name, uint64(cols), uint64(rows))
	if err != nil {
		return nil, err
	}
	return asMatrix(t)
}

// ggufVector reads the 1-D tensor name of n values, widened or dequantized
// to float32.
func ggufVector(ck *gguf.Checkpoint, name string, n int) ([]float32, error) {
	t, err := ggufTensor(ck, name, uint64(n))
	if err != nil {
		return nil, err
	}
	t.Shape = []uint64{uint64(n), 1}
	m, err := asMatrix(t)
	if err != nil {
		return nil, err
	}
	v := make([]float32, n)
	m.Row(v, 0)
	return v, nil
}

// ggufRotary reads the q or k projection name, heads heads of d rows each,
// and undoes llama.cpp's permutation of its rows: the converter stores
// Hugging Face's row s·d/2 + j of a head (s < 2, j < d/2, the rotate-half
// layout) as row 2j + s (GGML's interleaved pairs). Whole rows move, so
// this holds for every format; the matrix is a copy.
func ggufRotary(ck *gguf.Checkpoint, name string, heads, d, cols int) (kernel.Matrix, error) {
	rows := heads * d
	t, err := ggufTensor(ck, name, uint64(cols), uint64(rows))
	if err != nil {
		return nil, err
	}
	rb := len(t.Data) / rows
	data := make([]byte, len(t.Data))
	for h := range heads {
		for s := range 2 {
			for j := range d / 2 {
				dst, src := h*d+s*d/2+j, h*d+2*j+s
				copy(data[dst*rb:(dst+1)*rb], t.Data[src*rb:(src+1)*rb])
			}
		}
	}
	t.Data = data
	return asMatrix(t)
}

// loadGGUF is Load for a GGUF checkpoint.
func loadGGUF(path string) (*Model, error) {
	ck, cfg, err := openGGUF(path)
	if err != nil {
		return nil, err
	}
	m, err := newGGUFModel(ck, cfg)
	if err != nil {
		ck.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	m.closer = ck
	return m, nil
}

func newGGUFModel(ck *gguf.Checkpoint, cfg Config) (*Model, error) {
	m := &Model{Config: cfg, invFreq: kernel.RoPEFreqs(cfg.HeadDim(), cfg.RopeTheta)}
	var err error
	H, V := cfg.HiddenSize, cfg.VocabSize
	if m.Embed, err = ggufMatrix(ck, GGUFEmbedTensor, V, H); err != nil {
		return nil, err
	}
	if m.Norm, err = ggufVector(ck, GGUFNormTensor, H); err != nil {
		return nil, err
	}
	if cfg.TieWordEmbeddings {
		m.LMHead = m.Embed
	} else if m.LMHead, err = ggufMatrix(ck, GGUFOutputTensor, V, H); err != nil {
		return nil, err
	}
	m.Layers = make([]Layer, cfg.NumHiddenLayers)
	for l := range m.Layers {
		if m.Layers[l], err = ggufLayer(ck, &cfg, l); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func ggufLayer(ck *gguf.Checkpoint, c *Config, l int) (Layer, error) {
	var (
		ly  Layer
		err error
		H   = c.HiddenSize
		blk = func(kind string) string { return GGUFBlockTensor(l, kind) }
	)
	if ly.Q, err = ggufRotary(ck, blk("attn_q"), c.NumAttentionHeads, c.HeadDim(), H); err != nil {
		return Layer{}, err
	}
	if ly.K, err = ggufRotary(ck, blk("attn_k"), c.NumKeyValueHeads, c.HeadDim(), H); err != nil {
		return Layer{}, err
	}
	if ly.V, err = ggufMatrix(ck, blk("attn_v"), c.KVDim(), H); err != nil {
		return Layer{}, err
	}
	if ly.O, err = ggufMatrix(ck, blk("attn_output"), H, c.QDim()); err != nil {
		return Layer{}, err
	}
	if ly.Gate, err = ggufMatrix(ck, blk("ffn_gate_inp"), c.NumLocalExperts, H); err != nil {
		return Layer{}, err
	}
	if ly.InputNorm, err = ggufVector(ck, blk("attn_norm"), H); err != nil {
		return Layer{}, err
	}
	if ly.PostAttentionNorm, err = ggufVector(ck, blk("ffn_norm"), H); err != nil {
		return Layer{}, err
	}
	return ly, nil
}

// ggufExpertTensor returns one expert's weight of one kind in layer l: its
// slice of the stacked tensor (GGML shape {cols, rows, experts}) when the
// checkpoint has one, else its own tensor (GGML shape {cols, rows}). The
// data is a view of the mapping, so only that expert's bytes are touched.
func ggufExpertTensor(ck *gguf.Checkpoint, c *Config, l, e int, kind string, rows, cols int) (gguf.Tensor, error) {
	stacked := ggufStacked(l, kind)
	if _, err := ck.Info(stacked); err == nil {
		t, err := ggufTensor(ck, stacked, uint64(cols), uint64(rows), uint64(c.NumLocalExperts))
		if err != nil {
			return gguf.Tensor{}, err
		}
		s, err := t.Slice(e)
		if err != nil {
			return gguf.Tensor{}, fmt.Errorf("%w: %w", ErrWeights, err)
		}
		return s, nil
	}
	single := ggufPerExpert(l, e, kind)
	if _, err := ck.Info(single); err != nil {
		return gguf.Tensor{}, fmt.Errorf("%w: the checkpoint has neither %s nor %s", ErrWeights, stacked, single)
	}
	return ggufTensor(ck, single, uint64(cols), uint64(rows))
}

// ggufExpertShapes are the [rows, cols] of w1, w2 and w3.
func ggufExpertShapes(c *Config) [3][2]int {
	H, F := c.HiddenSize, c.IntermediateSize
	return [3][2]int{{F, H}, {H, F}, {F, H}}
}

// ggufExpert maps one expert of layer l and asks the kernel to read its
// bytes in ahead of use.
func ggufExpert(ck *gguf.Checkpoint, c *Config, l, e int) (*Expert, error) {
	var ms [3]kernel.Matrix
	for i, kind := range ggufKinds {
		shape := ggufExpertShapes(c)[i]
		t, err := ggufExpertTensor(ck, c, l, e, kind, shape[0], shape[1])
		if err != nil {
			return nil, err
		}
		if ms[i], err = asMatrix(t); err != nil {
			return nil, err
		}
		// Only a hint: where the kernel refuses it, the first use reads
		// the pages instead.
		_ = ck.Advise(t, gguf.WillNeed)
	}
	return &Expert{W1: ms[0], W2: ms[1], W3: ms[2]}, nil
}

// loadGGUFExperts is LoadExperts for a GGUF checkpoint. The whole file is
// mapped, but only the byte ranges of the experts loaded are ever read.
func loadGGUFExperts(path string, cfg Config, want func(layer, expert int) bool) (*ExpertSet, error) {
	ck, err := gguf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	s := &ExpertSet{cfg: cfg, experts: make(map[expertKey]*Expert), closer: ck}
	for l := range cfg.NumHiddenLayers {
		for e := range cfg.NumLocalExperts {
			if want != nil && !want(l, e) {
				continue
			}
			ex, err := ggufExpert(ck, &cfg, l, e)
			if err != nil {
				ck.Close()
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			s.experts[expertKey{l, e}] = ex
		}
	}
	return s, nil
}

// ggufExpertLayerBytes is CheckpointExpertLayerBytes for a GGUF checkpoint:
// the stored bytes of the largest expert-layer, from the tensor table.
func ggufExpertLayerBytes(path string, cfg Config) (int64, error) {
	ck, err := gguf.Open(path)
	if err != nil {
		return 0, fmt.Errorf("model: %w", err)
	}
	defer ck.Close()
	var most int64
	for l := range cfg.NumHiddenLayers {
		for e := range cfg.NumLocalExperts {
			var n int64
			for i, kind := range ggufKinds {
				shape := ggufExpertShapes(&cfg)[i]
				t, err := ggufExpertTensor(ck, &cfg, l, e, kind, shape[0], shape[1])
				if err != nil {
					return 0, fmt.Errorf("%s: %w", path, err)
				}
				n += int64(t.Size)
			}
			most = max(most, n)
		}
	}
	return most, nil
}

// ggufFingerprint is Fingerprint for a GGUF checkpoint: a SHA-256 over the
// configuration its metadata gives and, for every tensor in name order, its
// name, type, shape and first bytes. It does not depend on how the file is
// split.
func ggufFingerprint(path string) (string, error) {
	ck, cfg, err := openGGUF(path)
	if err != nil {
		return "", fmt.Errorf("model: fingerprint: %w", err)
	}
	defer ck.Close()
	h := sha256.New()
	enc, err := json.Marshal(cfg)
	if err != nil {
		return "", fmt.Errorf("model: fingerprint: %w", err)
	}
	h.Write([]byte("gguf\x00"))
	h.Write(enc)
	names := ck.Names()
	slices.Sort(names)
	for _, name := range names {
		t, err := ck.Tensor(name)
		if err != nil {
			return "", fmt.Errorf("model: fingerprint: %w", err)
		}
		fmt.Fprintf(h, "\x00%s\x00%s\x00%v\x00", name, t.Type, t.Shape)
		h.Write(t.Data[:min(len(t.Data), fingerprintSample)])
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}
