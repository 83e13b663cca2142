package model

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("model: invalid config")

// Config is a Hugging Face MixtralConfig as read from config.json. Field
// names follow the file; fields the file leaves out take MixtralConfig's
// defaults.
type Config struct {
	Architectures         []string `json:"architectures,omitempty"`
	ModelType             string   `json:"model_type"`
	VocabSize             int      `json:"vocab_size"`
	HiddenSize            int      `json:"hidden_size"`
	IntermediateSize      int      `json:"intermediate_size"`
	NumHiddenLayers       int      `json:"num_hidden_layers"`
	NumAttentionHeads     int      `json:"num_attention_heads"`
	NumKeyValueHeads      int      `json:"num_key_value_heads"`
	HeadDimension         int      `json:"head_dim,omitempty"`
	NumLocalExperts       int      `json:"num_local_experts"`
	NumExpertsPerTok      int      `json:"num_experts_per_tok"`
	HiddenAct             string   `json:"hidden_act"`
	MaxPositionEmbeddings int      `json:"max_position_embeddings"`
	RMSNormEps            float64  `json:"rms_norm_eps"`
	RopeTheta             float64  `json:"rope_theta"`
	// SlidingWindow is the number of keys a query sees, itself included;
	// nil means full causal attention (Mixtral-8x7B-v0.1).
	SlidingWindow     *int   `json:"sliding_window"`
	TieWordEmbeddings bool   `json:"tie_word_embeddings"`
	BOSTokenID        int    `json:"bos_token_id"`
	EOSTokenID        int    `json:"eos_token_id"`
	TorchDType        string `json:"torch_dtype,omitempty"`
}

// DefaultConfig returns MixtralConfig's class defaults (Mixtral-8x7B shapes).
func DefaultConfig() Config {
	return Config{
		ModelType:             "mixtral",
		VocabSize:             32000,
		HiddenSize:            4096,
		IntermediateSize:      14336,
		NumHiddenLayers:       32,
		NumAttentionHeads:     32,
		NumKeyValueHeads:      8,
		NumLocalExperts:       8,
		NumExpertsPerTok:      2,
		HiddenAct:             "silu",
		MaxPositionEmbeddings: 4096 * 32,
		RMSNormEps:            1e-5,
		RopeTheta:             1e6,
		BOSTokenID:            1,
		EOSTokenID:            2,
	}
}

// fileConfig is config.json as written: the fields it shadows need
// interpretation before they fit Config (values that may be null or lists,
// settings that newer files keep under other names).
type fileConfig struct {
	Config
	NumKeyValueHeads json.RawMessage `json:"num_key_value_heads"`
	HeadDimension    json.RawMessage `json:"head_dim"`
	BOSTokenID       json.RawMessage `json:"bos_token_id"`
	EOSTokenID       json.RawMessage `json:"eos_token_id"`
	DType            string          `json:"dtype"`
	RopeScaling      json.RawMessage `json:"rope_scaling"`
	RopeParameters   *struct {
		RopeTheta *float64 `json:"rope_theta"`
		RopeType  string   `json:"rope_type"`
	} `json:"rope_parameters"`
}

// ParseConfig decodes and validates a config.json.
func ParseConfig(data []byte) (Config, error) {
	def := DefaultConfig()
	f := fileConfig{Config: def}
	if err := json.Unmarshal(data, &f); err != nil {
		return Config{}, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	cfg := f.Config
	var err error
	// An absent num_key_value_heads takes the class default (8); an explicit
	// null means one kv head per query head, as MixtralConfig does.
	kvDefault := def.NumKeyValueHeads
	if f.NumKeyValueHeads != nil {
		kvDefault = cfg.NumAttentionHeads
	}
	if cfg.NumKeyValueHeads, err = optionalInt(f.NumKeyValueHeads, "num_key_value_heads", kvDefault); err != nil {
		return Config{}, err
	}
	if cfg.HeadDimension, err = optionalInt(f.HeadDimension, "head_dim", 0); err != nil {
		return Config{}, err
	}
	if cfg.BOSTokenID, err = tokenID(f.BOSTokenID, "bos_token_id", def.BOSTokenID); err != nil {
		return Config{}, err
	}
	if cfg.EOSTokenID, err = tokenID(f.EOSTokenID, "eos_token_id", def.EOSTokenID); err != nil {
		return Config{}, err
	}
	if cfg.TorchDType == "" {
		cfg.TorchDType = f.DType
	}
	if p := f.RopeParameters; p != nil {
		if p.RopeType != "" && p.RopeType != "default" {
			return Config{}, fmt.Errorf("%w: rope_parameters.rope_type %q is not supported (only \"default\")", ErrConfig, p.RopeType)
		}
		if p.RopeTheta != nil {
			cfg.RopeTheta = *p.RopeTheta
		}
	}
	if f.RopeScaling != nil && !isNull(f.RopeScaling) {
		var rs struct {
			Type     string `json:"type"`
			RopeType string `json:"rope_type"`
		}
		if err := json.Unmarshal(f.RopeScaling, &rs); err != nil {
			return Config{}, fmt.Errorf("%w: rope_scaling: %v", ErrConfig, err)
		}
		if t := rs.RopeType + rs.Type; t != "" && t != "default" {
			return Config{}, fmt.Errorf("%w: rope_scaling type %q is not supported", ErrConfig, t)
		}
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// LoadConfig reads config.json from a checkpoint directory (or the file
// itself when path names a file), or builds the configuration from the
// metadata of a GGUF checkpoint (see IsGGUF).
func LoadConfig(path string) (Config, error) {
	if IsGGUF(path) {
		ck, cfg, err := openGGUF(path)
		if err != nil {
			return Config{}, err
		}
		ck.Close()
		return cfg, nil
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		path = filepath.Join(path, "config.json")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("model: read config: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

func isNull(m json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(m), []byte("null")) }

// optionalInt decodes an integer field that may be absent or null (then def).
func optionalInt(m json.RawMessage, field string, def int) (int, error) {
	if m == nil || isNull(m) {
		return def, nil
	}
	var v int
	if err := json.Unmarshal(m, &v); err != nil {
		return 0, fmt.Errorf("%w: %s: %v", ErrConfig, field, err)
	}
	return v, nil
}

// tokenID decodes a token id field, which some configs write as a list; the
// first id of a list is used.
func tokenID(m json.RawMessage, field string, def int) (int, error) {
	if m == nil || isNull(m) {
		return def, nil
	}
	var ids []int
	if err := json.Unmarshal(m, &ids); err == nil {
		if len(ids) == 0 {
			return 0, fmt.Errorf("%w: %s: empty list", ErrConfig, field)
		}
		return ids[0], nil
	}
	return optionalInt(m, field, def)
}

// maxConfigSize bounds every size of a configuration (max_position_embeddings
// aside), so that products of sizes fit in an int64 with room to spare.
const maxConfigSize = 1 << 24

// Validate checks that the configuration describes a Mixtral model this
// package can run. Each error names the offending field.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...)
	}
	if c.ModelType != "mixtral" {
		return bad("model_type %q is not supported (want \"mixtral\")", c.ModelType)
	}
	positive := []struct {
		name string
		v    int
	}{
		{"vocab_size", c.VocabSize},
		{"hidden_size", c.HiddenSize},
		{"intermediate_size", c.IntermediateSize},
		{"num_hidden_layers", c.NumHiddenLayers},
		{"num_attention_heads", c.NumAttentionHeads},
		{"num_key_value_heads", c.NumKeyValueHeads},
		{"num_local_experts", c.NumLocalExperts},
		{"num_experts_per_tok", c.NumExpertsPerTok},
		{"max_position_embeddings", c.MaxPositionEmbeddings},
	}
	for _, p := range positive {
		if p.v <= 0 {
			return bad("%s must be positive, got %d", p.name, p.v)
		}
		// Sizes multiply into tensor shapes and allocations: bounding them
		// refuses a corrupt config here instead of overflowing the derived
		// sizes or exhausting memory in Load. Real models are far below.
		if p.v > maxConfigSize && p.name != "max_position_embeddings" {
			return bad("%s %d exceeds %d", p.name, p.v, maxConfigSize)
		}
	}
	if c.HeadDimension < 0 || c.HeadDimension > maxConfigSize {
		return bad("head_dim must be positive and at most %d, got %d", maxConfigSize, c.HeadDimension)
	}
	if c.HeadDimension == 0 && c.HiddenSize%c.NumAttentionHeads != 0 {
		return bad("hidden_size (%d) is not divisible by num_attention_heads (%d)", c.HiddenSize, c.NumAttentionHeads)
	}
	if c.HeadDim()%2 != 0 {
		return bad("head dimension %d must be even for rotary embeddings", c.HeadDim())
	}
	if c.NumAttentionHeads%c.NumKeyValueHeads != 0 {
		return bad("num_attention_heads (%d) is not divisible by num_key_value_heads (%d)", c.NumAttentionHeads, c.NumKeyValueHeads)
	}
	if c.NumExpertsPerTok > c.NumLocalExperts {
		return bad("num_experts_per_tok (%d) exceeds num_local_experts (%d)", c.NumExpertsPerTok, c.NumLocalExperts)
	}
	if c.HiddenAct != "silu" {
		return bad("hidden_act %q is not supported (want \"silu\")", c.HiddenAct)
	}
	if !(c.RMSNormEps > 0) {
		return bad("rms_norm_eps must be positive, got %g", c.RMSNormEps)
	}
	if !(c.RopeTheta > 0) {
		return bad("rope_theta must be positive, got %g", c.RopeTheta)
	}
	if c.SlidingWindow != nil && *c.SlidingWindow <= 0 {
		return bad("sliding_window must be positive or null, got %d", *c.SlidingWindow)
	}
	for _, id := range []struct {
		name string
		v    int
	}{{"bos_token_id", c.BOSTokenID}, {"eos_token_id", c.EOSTokenID}} {
		if id.v < 0 || id.v >= c.VocabSize {
			return bad("%s %d is outside the vocabulary [0, %d)", id.name, id.v, c.VocabSize)
		}
	}
	return nil
}

// HeadDim is the per-head dimension: head_dim when set, else hidden/heads.
func (c *Config) HeadDim() int {
	if c.HeadDimension > 0 {
		return c.HeadDimension
	}
	return c.HiddenSize / c.NumAttentionHeads
}

// QueriesPerKV is the number of query heads that share one key/value head.
func (c *Config) QueriesPerKV() int { return c.NumAttentionHeads / c.NumKeyValueHeads }

// QDim is the width of the query projection, heads × head dim.
func (c *Config) QDim() int { return c.NumAttentionHeads * c.HeadDim() }

// KVDim is the width of the key and value projections.
func (c *Config) KVDim() int { return c.NumKeyValueHeads * c.HeadDim() }

// ExpertParams is the number of weights of one expert in one layer
// (w1, w2 and w3).
func (c *Config) ExpertParams() int64 {
	return 3 * int64(c.HiddenSize) * int64(c.IntermediateSize)
}
