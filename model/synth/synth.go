// Package synth writes synthetic Mixtral checkpoints (spec synth-v1): random
// weights that are a pure function of (tensor name, element index, seed), in
// exactly the Hugging Face layout of a real checkpoint, so that code which
// loads them loads a real checkpoint unchanged and any implementation can
// regenerate the same bits.
package synth

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"sync"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/tokenizer/mistralv1"
)

// ErrOptions is wrapped by errors about invalid generation options.
var ErrOptions = errors.New("synth: invalid options")

// Preset is a named model shape.
type Preset struct {
	Name                                         string
	Hidden, Layers, Heads, KVHeads, Intermediate int
}

// Presets are the shapes of spec synth-v1. mixtral-8x7b is the real shape,
// for planning and shape tests; it is never synthesised whole.
var Presets = []Preset{
	{Name: "tiny", Hidden: 128, Layers: 2, Heads: 4, KVHeads: 2, Intermediate: 256},
	{Name: "small", Hidden: 1024, Layers: 8, Heads: 16, KVHeads: 4, Intermediate: 3584},
	{Name: "mixtral-8x7b", Hidden: 4096, Layers: 32, Heads: 32, KVHeads: 8, Intermediate: 14336},
}

// PresetByName finds a preset.
func PresetByName(name string) (Preset, error) {
	for _, p := range Presets {
		if p.Name == name {
			return p, nil
		}
	}
	names := make([]string, len(Presets))
	for i, p := range Presets {
		names[i] = p.Name
	}
	return Preset{}, fmt.Errorf("%w: unknown preset %q (have %v)", ErrOptions, name, names)
}

// Config is the model configuration of a preset.
func (p Preset) Config() model.Config {
	c := model.DefaultConfig()
	c.Architectures = []string{"MixtralForCausalLM"}
	c.HiddenSize = p.Hidden
	c.NumHiddenLayers = p.Layers
	c.NumAttentionHeads = p.Heads
	c.NumKeyValueHeads = p.KVHeads
	c.IntermediateSize = p.Intermediate
	c.MaxPositionEmbeddings = 32768
	return c
}

// Options select what Write produces.
type Options struct {
	Preset Preset
	Seed   uint64
	// DType is F32 or BF16.
	DType safetensors.DType
	// Shards is the number of safetensors files; 1 writes model.safetensors,
	// more write model-0000K-of-0000N.safetensors and the index.
	Shards int
}

// Value is element i of the named tensor: the spec's deterministic draw,
// scaled, in float64 before rounding to the stored dtype.
func Value(name string, i uint64, seed uint64, scale float64, norm bool) float64 {
	h := splitmix64((fnv1a64(name) ^ seed) + i)
	v := 2*(float64(h>>11)/(1<<53)) - 1
	if norm {
		return 1 + 0.1*v
	}
	return v * scale
}

func fnv1a64(s string) uint64 {
	h := uint64(0xcbf29ce484222325)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 0x100000001b3
	}
	return h
}

func splitmix64(x uint64) uint64 {
	x += 0x9E3779B97F4A7C15
	z := x
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// tensorSpec is one tensor to generate.
type tensorSpec struct {
	name  string
	shape []int
	scale float64
	norm  bool
}

func (t tensorSpec) elements() int {
	n := 1
	for _, d := range t.shape {
		n *= d
	}
	return n
}

// tensors lists every tensor of the preset in checkpoint order.
func tensors(c model.Config) []tensorSpec {
	H, F, V, E := c.HiddenSize, c.IntermediateSize, c.VocabSize, c.NumLocalExperts
	lin := func(name string, rows, cols int, mult float64) tensorSpec {
		return tensorSpec{name: name, shape: []int{rows, cols}, scale: mult * math.Sqrt(3/float64(cols))}
	}
	norm := func(name string) tensorSpec { return tensorSpec{name: name, shape: []int{H}, norm: true} }
	ts := []tensorSpec{{name: model.EmbedTensor, shape: []int{V, H}, scale: 1}}
	for l := range c.NumHiddenLayers {
		p := fmt.Sprintf("model.layers.%d.", l)
		ts = append(ts,
			norm(p+"input_layernorm.weight"),
			lin(p+"self_attn.q_proj.weight", c.QDim(), H, 1),
			lin(p+"self_attn.k_proj.weight", c.KVDim(), H, 1),
			lin(p+"self_attn.v_proj.weight", c.KVDim(), H, 1),
			lin(p+"self_attn.o_proj.weight", H, c.QDim(), 1),
			norm(p+"post_attention_layernorm.weight"),
			lin(p+"block_sparse_moe.gate.weight", E, H, 4),
		)
		for e := range E {
			n := model.ExpertTensors(l, e)
			ts = append(ts, lin(n[0], F, H, 1), lin(n[1], H, F, 1), lin(n[2], F, H, 1))
		}
	}
	return append(ts, norm(model.NormTensor), lin(model.LMHeadTensor, V, H, 3))
}

// generate fills the tensor's bytes in dtype, splitting the elements across
// goroutines.
func generate(t tensorSpec, seed uint64, dtype safetensors.DType) []byte {
	n := t.elements()
	out := make([]byte, n*dtype.Size())
	workers := runtime.GOMAXPROCS(0)
	chunk := (n + workers - 1) / workers
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wg.Go(func() {
			for i := lo; i < hi; i++ {
				f := float32(Value(t.name, uint64(i), seed, t.scale, t.norm))
				if dtype == safetensors.BF16 {
					binary.LittleEndian.PutUint16(out[2*i:], safetensors.Float32ToBF16(f))
				} else {
					binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(f))
				}
			}
		})
	}
	wg.Wait()
	return out
}

// Write writes a checkpoint directory: config.json, the safetensors file(s)
// (with model.safetensors.index.json when sharded), tokenizer.json and
// generation_config.json. Shards hold contiguous runs of tensors in
// checkpoint order, balanced by bytes; one shard is generated in memory at a
// time.
func Write(dir string, o Options) error {
	if o.DType != safetensors.F32 && o.DType != safetensors.BF16 {
		return fmt.Errorf("%w: dtype %q (want F32 or BF16)", ErrOptions, o.DType)
	}
	if o.Preset.Name == "mixtral-8x7b" {
		return fmt.Errorf("%w: preset mixtral-8x7b is for planning only (93 GB); use tiny or small", ErrOptions)
	}
	cfg := o.Preset.Config()
	if err := cfg.Validate(); err != nil {
		return err
	}
	specs := tensors(cfg)
	if o.Shards < 1 || o.Shards > len(specs) {
		return fmt.Errorf("%w: shards %d must be in [1, %d]", ErrOptions, o.Shards, len(specs))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	if err := writeConfig(dir, cfg, o.DType); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), mistralv1.TokenizerJSON, 0o644); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	gen, _ := json.MarshalIndent(map[string]any{"bos_token_id": cfg.BOSTokenID, "eos_token_id": cfg.EOSTokenID}, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "generation_config.json"), append(gen, '\n'), 0o644); err != nil {
		return fmt.Errorf("synth: %w", err)
	}

	groups := split(specs, o.Shards, o.DType.Size())
	meta := map[string]string{"format": "pt", "moegrid_synth": fmt.Sprintf("synth-v1 preset=%s seed=%d", o.Preset.Name, o.Seed)}
	weightMap := map[string]string{}
	var total int64
	for k, g := range groups {
		file := "model.safetensors"
		if o.Shards > 1 {
			file = fmt.Sprintf("model-%05d-of-%05d.safetensors", k+1, o.Shards)
		}
		wts := make([]safetensors.WriteTensor, len(g))
		for i, t := range g {
			data := generate(t, o.Seed, o.DType)
			wts[i] = safetensors.WriteTensor{Name: t.name, DType: o.DType, Shape: t.shape, Data: data}
			weightMap[t.name] = file
			total += int64(len(data))
		}
		if err := safetensors.WriteFileAligned(filepath.Join(dir, file), wts, meta); err != nil {
			return fmt.Errorf("synth: %w", err)
		}
	}
	if o.Shards > 1 {
		if err := safetensors.WriteIndex(filepath.Join(dir, "model.safetensors.index.json"), total, weightMap); err != nil {
			return fmt.Errorf("synth: %w", err)
		}
	}
	return nil
}

// split cuts specs into n contiguous groups of roughly equal bytes.
func split(specs []tensorSpec, n, elemSize int) [][]tensorSpec {
	var total int64
	for _, t := range specs {
		total += int64(t.elements() * elemSize)
	}
	groups := make([][]tensorSpec, 0, n)
	var acc int64
	start := 0
	for i, t := range specs {
		acc += int64(t.elements() * elemSize)
		remainingSpecs := len(specs) - i - 1
		remainingGroups := n - len(groups) - 1
		// Close the group once it reaches its share of the bytes, keeping
		// at least one tensor for each group still to come.
		if remainingGroups > 0 && (acc*int64(n) >= total*int64(len(groups)+1) || remainingSpecs == remainingGroups) {
			groups = append(groups, specs[start:i+1])
			start = i + 1
		}
	}
	return append(groups, specs[start:])
}

func writeConfig(dir string, cfg model.Config, dtype safetensors.DType) error {
	torchDType := "float32"
	if dtype == safetensors.BF16 {
		torchDType = "bfloat16"
	}
	m := map[string]any{
		"architectures":           cfg.Architectures,
		"attention_dropout":       0.0,
		"bos_token_id":            cfg.BOSTokenID,
		"eos_token_id":            cfg.EOSTokenID,
		"hidden_act":              cfg.HiddenAct,
		"hidden_size":             cfg.HiddenSize,
		"initializer_range":       0.02,
		"intermediate_size":       cfg.IntermediateSize,
		"max_position_embeddings": cfg.MaxPositionEmbeddings,
		"model_type":              cfg.ModelType,
		"num_attention_heads":     cfg.NumAttentionHeads,
		"num_experts_per_tok":     cfg.NumExpertsPerTok,
		"num_hidden_layers":       cfg.NumHiddenLayers,
		"num_key_value_heads":     cfg.NumKeyValueHeads,
		"num_local_experts":       cfg.NumLocalExperts,
		"output_router_logits":    false,
		"rms_norm_eps":            cfg.RMSNormEps,
		"rope_theta":              cfg.RopeTheta,
		"router_aux_loss_coef":    0.02,
		"sliding_window":          nil,
		"tie_word_embeddings":     false,
		"torch_dtype":             torchDType,
		"use_cache":               true,
		"vocab_size":              cfg.VocabSize,
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	return nil
}

// TensorNames lists the names of every tensor of a preset, sorted.
func TensorNames(p Preset) []string {
	specs := tensors(p.Config())
	names := make([]string, len(specs))
	for i, t := range specs {
		names[i] = t.name
	}
	sort.Strings(names)
	return slices.Clip(names)
}
