package model_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/moegrid/moegrid/model"
)

const configDir = "testdata/config"

// mixtral8x7b is the configuration of Mixtral-8x7B-v0.1 as its config.json
// gives it.
func mixtral8x7b() model.Config {
	return model.Config{
		Architectures:         []string{"MixtralForCausalLM"},
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
		MaxPositionEmbeddings: 32768,
		RMSNormEps:            1e-5,
		RopeTheta:             1e6,
		BOSTokenID:            1,
		EOSTokenID:            2,
		TorchDType:            "bfloat16",
	}
}

// goodConfigs are the accepted files of testdata/config, each with the
// configuration it must give and the derived sizes.
var goodConfigs = []struct {
	file                  string
	want                  func(c *model.Config) // applied to mixtral8x7b()
	headDim, queriesPerKV int
}{
	{"mixtral-8x7b-v0.1.json", func(*model.Config) {}, 128, 4},
	{"head-dim.json", func(c *model.Config) { c.HiddenSize, c.HeadDimension = 5120, 128 }, 128, 4},
	// An explicit null means one kv head per query head; absent means the
	// class default, 8.
	{"kv-heads-null.json", func(c *model.Config) { c.NumKeyValueHeads = 32 }, 128, 1},
	{"kv-heads-absent.json", func(*model.Config) {}, 128, 4},
	{"eos-list.json", func(*model.Config) {}, 128, 4},
	// transformers v5: rope_parameters and dtype.
	{"rope-parameters.json", func(c *model.Config) { c.RopeTheta = 1e4 }, 128, 4},
	{"dtype.json", func(c *model.Config) { c.TorchDType = "float16" }, 128, 4},
	{"sliding-window.json", func(c *model.Config) { c.SlidingWindow = new(4096) }, 128, 4},
	{"rope-scaling-null.json", func(*model.Config) {}, 128, 4},
	{"minimal.json", func(c *model.Config) {
		*c = model.DefaultConfig()
	}, 128, 4},
}

// badConfigs are the refused files of testdata/config, each with a
// substring of its error that names what is wrong.
var badConfigs = []struct {
	file, want string
}{
	{"model-type-llama.bad.json", `model_type "llama"`},
	{"heads-not-dividing-hidden.bad.json", "hidden_size (4096) is not divisible by num_attention_heads (48)"},
	{"kv-heads-not-dividing-heads.bad.json", "not divisible by num_key_value_heads (6)"},
	{"experts-per-tok-above-experts.bad.json", "num_experts_per_tok (9) exceeds num_local_experts (8)"},
	{"rope-scaling-yarn.bad.json", `rope_scaling type "yarn"`},
	{"rope-parameters-yarn.bad.json", `rope_parameters.rope_type "yarn"`},
	{"sliding-window-negative.bad.json", "sliding_window"},
	{"bos-out-of-vocab.bad.json", "bos_token_id 32000"},
	{"eos-list-empty.bad.json", "eos_token_id"},
	{"hidden-act-gelu.bad.json", `hidden_act "gelu"`},
	{"head-dim-odd.bad.json", "head dimension 127"},
	{"hidden-size-zero.bad.json", "hidden_size must be positive"},
	{"hidden-size-string.bad.json", "hidden_size"},
	// Sizes whose products would overflow (QDim, ExpertParams) and whose
	// allocations would exhaust memory are refused.
	{"hidden-size-huge.bad.json", "hidden_size 4611686018427387904 exceeds"},
	{"kv-heads-string.bad.json", "num_key_value_heads"},
	{"rms-norm-eps-zero.bad.json", "rms_norm_eps"},
	{"malformed.bad.json", "unexpected end of JSON input"},
}

func readConfigFile(t testing.TB, file string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(configDir, file))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestParseConfig(t *testing.T) {
	for _, tc := range goodConfigs {
		t.Run(tc.file, func(t *testing.T) {
			cfg, err := model.ParseConfig(readConfigFile(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			want := mixtral8x7b()
			tc.want(&want)
			if d := cmp.Diff(want, cfg); d != "" {
				t.Errorf("config (-want +got):\n%s", d)
			}
			if got := cfg.HeadDim(); got != tc.headDim {
				t.Errorf("HeadDim = %d, want %d", got, tc.headDim)
			}
			if got := cfg.QueriesPerKV(); got != tc.queriesPerKV {
				t.Errorf("QueriesPerKV = %d, want %d", got, tc.queriesPerKV)
			}
			if err := cfg.Validate(); err != nil {
				t.Errorf("Validate = %v", err)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range badConfigs {
		t.Run(tc.file, func(t *testing.T) {
			_, err := model.ParseConfig(readConfigFile(t, tc.file))
			if !errors.Is(err, model.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseConfig error = %v, want ErrConfig containing %q", err, tc.want)
			}
		})
	}
}

// TestConfigFilesListed keeps the tables and testdata/config in step: a
// file nobody checks is a test that does not run.
func TestConfigFilesListed(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(configDir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, tc := range goodConfigs {
		listed = append(listed, tc.file)
	}
	for _, tc := range badConfigs {
		listed = append(listed, tc.file)
	}
	for _, f := range files {
		if !slices.Contains(listed, filepath.Base(f)) {
			t.Errorf("%s is in no test table", f)
		}
	}
}

func TestDerivedSizes(t *testing.T) {
	c := mixtral8x7b()
	for _, tc := range []struct {
		name      string
		got, want int64
	}{
		{"HeadDim", int64(c.HeadDim()), 128},
		{"QueriesPerKV", int64(c.QueriesPerKV()), 4},
		{"QDim", int64(c.QDim()), 4096},
		{"KVDim", int64(c.KVDim()), 1024},
		{"ExpertParams", c.ExpertParams(), 3 * 4096 * 14336},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
	d := model.DefaultConfig()
	if err := d.Validate(); err != nil {
		t.Errorf("DefaultConfig().Validate() = %v", err)
	}
}

// TestValidateNamesField checks Validate on configurations built in code,
// for the errors a file cannot reach through ParseConfig's defaults.
func TestValidateNamesField(t *testing.T) {
	for _, tc := range []struct {
		field  string
		modify func(c *model.Config)
	}{
		{"vocab_size", func(c *model.Config) { c.VocabSize = 0 }},
		{"intermediate_size", func(c *model.Config) { c.IntermediateSize = -1 }},
		{"num_hidden_layers", func(c *model.Config) { c.NumHiddenLayers = 0 }},
		{"num_attention_heads", func(c *model.Config) { c.NumAttentionHeads = 0 }},
		{"num_key_value_heads", func(c *model.Config) { c.NumKeyValueHeads = 0 }},
		{"num_local_experts", func(c *model.Config) { c.NumLocalExperts = 0 }},
		{"num_experts_per_tok", func(c *model.Config) { c.NumExpertsPerTok = 0 }},
		{"max_position_embeddings", func(c *model.Config) { c.MaxPositionEmbeddings = 0 }},
		{"head_dim", func(c *model.Config) { c.HeadDimension = -2 }},
		{"head_dim", func(c *model.Config) { c.HeadDimension = 1 << 40 }},
		{"num_hidden_layers", func(c *model.Config) { c.NumHiddenLayers = 1 << 40 }},
		{"vocab_size", func(c *model.Config) { c.VocabSize = 1 << 30 }},
		{"rope_theta", func(c *model.Config) { c.RopeTheta = 0 }},
		{"sliding_window", func(c *model.Config) { c.SlidingWindow = new(0) }},
		{"eos_token_id", func(c *model.Config) { c.EOSTokenID = -1 }},
	} {
		t.Run(tc.field, func(t *testing.T) {
			c := mixtral8x7b()
			tc.modify(&c)
			if err := c.Validate(); !errors.Is(err, model.ErrConfig) || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("Validate = %v, want ErrConfig naming %s", err, tc.field)
			}
		})
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), readConfigFile(t, "mixtral-8x7b-v0.1.json"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{dir, filepath.Join(dir, "config.json"), filepath.Join(configDir, "mixtral-8x7b-v0.1.json")} {
		cfg, err := model.LoadConfig(path)
		if err != nil {
			t.Fatalf("LoadConfig(%s): %v", path, err)
		}
		if d := cmp.Diff(mixtral8x7b(), cfg); d != "" {
			t.Errorf("LoadConfig(%s) (-want +got):\n%s", path, d)
		}
	}

	if _, err := model.LoadConfig(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadConfig(empty dir) = %v, want ErrNotExist", err)
	}
	if _, err := model.LoadConfig(filepath.Join(dir, "missing.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadConfig(missing file) = %v, want ErrNotExist", err)
	}
	bad := filepath.Join(configDir, "hidden-act-gelu.bad.json")
	_, err := model.LoadConfig(bad)
	if !errors.Is(err, model.ErrConfig) || !strings.Contains(err.Error(), bad) {
		t.Errorf("LoadConfig(%s) = %v, want ErrConfig naming the file", bad, err)
	}
}

// FuzzParseConfig checks that ParseConfig never panics, that every error
// wraps ErrConfig, and that an accepted configuration is valid with sizes
// that can be computed.
func FuzzParseConfig(f *testing.F) {
	files, err := filepath.Glob(filepath.Join(configDir, "*.json"))
	if err != nil {
		f.Fatal(err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"model_type":"mixtral","num_key_value_heads":null,"eos_token_id":[2],"rope_parameters":{"rope_theta":5}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := model.ParseConfig(data)
		if err != nil {
			if !errors.Is(err, model.ErrConfig) {
				t.Fatalf("error %v does not wrap ErrConfig", err)
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("accepted config fails Validate: %v", err)
		}
		if d := cfg.HeadDim(); d <= 0 || d%2 != 0 {
			t.Fatalf("HeadDim = %d", d)
		}
		if cfg.QueriesPerKV() < 1 || cfg.QDim() <= 0 || cfg.KVDim() <= 0 || cfg.ExpertParams() <= 0 {
			t.Fatalf("derived sizes: QueriesPerKV %d, QDim %d, KVDim %d, ExpertParams %d", cfg.QueriesPerKV(), cfg.QDim(), cfg.KVDim(), cfg.ExpertParams())
		}
		for _, id := range []int{cfg.BOSTokenID, cfg.EOSTokenID} {
			if id < 0 || id >= cfg.VocabSize {
				t.Fatalf("token id %d outside the vocabulary %d", id, cfg.VocabSize)
			}
		}
	})
}
