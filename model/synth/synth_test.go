package synth

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/tokenizer/mistralv1"
)

// TestCheckValues checks the spec's published check values.
func TestCheckValues(t *testing.T) {
	if got, want := fnv1a64("a"), uint64(0xaf63dc4c8601ec8c); got != want {
		t.Errorf("fnv1a64(a) = %#x, want %#x", got, want)
	}
	if got, want := splitmix64(0), uint64(0xe220a8397b1dcdaf); got != want {
		t.Errorf("splitmix64(0) = %#x, want %#x", got, want)
	}
	want := []float64{-0.2967851007249398, 0.8062052435624119, -0.9797330774796602, 0.5878302717380199}
	for i, w := range want {
		// The embedding's scale is 1, so Value is v itself.
		if got := Value(model.EmbedTensor, uint64(i), 1, 1, false); got != w {
			t.Errorf("seed 1 %s[%d] = %v, want %v", model.EmbedTensor, i, got, w)
		}
	}
}

func TestValueScaleAndNorm(t *testing.T) {
	const name = "model.layers.0.input_layernorm.weight"
	for i := range uint64(100) {
		v := Value(name, i, 9, 1, false)
		if v < -1 || v >= 1 {
			t.Fatalf("v[%d] = %v outside [-1, 1)", i, v)
		}
		if got := Value(name, i, 9, 0.25, false); got != 0.25*v {
			t.Errorf("scaled value %v, want %v", got, 0.25*v)
		}
		if got := Value(name, i, 9, 123, true); got != 1+0.1*v {
			t.Errorf("norm value %v, want 1 + 0.1·%v = %v", got, v, 1+0.1*v)
		}
	}
	if Value(name, 0, 1, 1, false) == Value(name, 0, 2, 1, false) {
		t.Error("seeds 1 and 2 give the same value")
	}
}

// specScale is the spec's scale table, read from the tensor name and its
// shape [out, in]; norm reports the norm weights, which are 1 + 0.1·v.
func specScale(t *testing.T, name string, shape []int) (scale float64, norm bool) {
	t.Helper()
	in := func() float64 {
		if len(shape) != 2 {
			t.Fatalf("%s: shape %v, want 2-D", name, shape)
		}
		return float64(shape[1])
	}
	layer := regexp.MustCompile(`^model\.layers\.\d+\.(.*)$`)
	rest := ""
	if m := layer.FindStringSubmatch(name); m != nil {
		rest = m[1]
	}
	switch {
	case name == "model.embed_tokens.weight":
		return 1, false
	case name == "lm_head.weight":
		return 3 * math.Sqrt(3/in()), false
	case name == "model.norm.weight", rest == "input_layernorm.weight", rest == "post_attention_layernorm.weight":
		return 0, true
	case rest == "block_sparse_moe.gate.weight":
		return 4 * math.Sqrt(3/in()), false
	case regexp.MustCompile(`^self_attn\.[qkvo]_proj\.weight$`).MatchString(rest),
		regexp.MustCompile(`^block_sparse_moe\.experts\.\d+\.w[123]\.weight$`).MatchString(rest):
		return math.Sqrt(3 / in()), false
	}
	t.Fatalf("tensor %q is not in the spec's table", name)
	return 0, false
}

var (
	writtenMu sync.Mutex
	written   = map[string]string{}
)

// writeTiny writes (once per test binary) the tiny checkpoint for a seed,
// dtype and number of shards and returns its directory.
func writeTiny(t *testing.T, seed uint64, dtype safetensors.DType, shards int) string {
	t.Helper()
	writtenMu.Lock()
	defer writtenMu.Unlock()
	key := fmt.Sprint(seed, dtype, shards)
	if dir, ok := written[key]; ok {
		return dir
	}
	p, err := PresetByName("tiny")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "moegrid-synth-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := Write(dir, Options{Preset: p, Seed: seed, DType: dtype, Shards: shards}); err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	written[key] = dir
	return dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, dir := range written {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

func openCheckpoint(t *testing.T, dir string) *safetensors.Checkpoint {
	t.Helper()
	ck, err := safetensors.OpenCheckpoint(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ck.Close() })
	return ck
}

// sampleIndices picks the elements of an n-element tensor to check: the
// first and last few and some in between.
func sampleIndices(rng *rand.Rand, n int) []int {
	var idx []int
	for i := range min(n, 16) {
		idx = append(idx, i, n-1-i)
	}
	for range 200 {
		idx = append(idx, rng.IntN(n))
	}
	return idx
}

// TestWrittenValues checks a written F32 checkpoint element by element
// against the spec: every tensor of the preset, with the shape and scale of
// the spec's table.
func TestWrittenValues(t *testing.T) {
	const seed = 5
	dir := writeTiny(t, seed, safetensors.F32, 1)
	ck := openCheckpoint(t, dir)
	p, _ := PresetByName("tiny")
	if d := cmp.Diff(TensorNames(p), ck.Names()); d != "" {
		t.Errorf("tensor names (-TensorNames +file):\n%s", d)
	}
	if n := len(ck.Names()); n != 3+p.Layers*(7+3*8) {
		t.Errorf("%d tensors, want %d", n, 3+p.Layers*(7+3*8))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, name := range ck.Names() {
		tn, err := ck.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		if tn.DType != safetensors.F32 {
			t.Fatalf("%s: dtype %s, want F32", name, tn.DType)
		}
		scale, norm := specScale(t, name, tn.Shape)
		vals, err := tn.Float32s()
		if err != nil {
			t.Fatal(err)
		}
		idx := sampleIndices(rng, len(vals))
		if norm { // small: check all of them
			idx = idx[:0]
			for i := range vals {
				idx = append(idx, i)
			}
		}
		for _, i := range idx {
			v := Value(name, uint64(i), seed, 1, false)
			want := float32(v * scale)
			if norm {
				want = float32(1 + 0.1*v)
			}
			if vals[i] != want {
				t.Fatalf("%s[%d] = %v, want %v", name, i, vals[i], want)
			}
		}
	}
}

// TestTensorShapes checks the shapes of every preset, the real Mixtral
// shape included, against the spec and its parameter counts.
func TestTensorShapes(t *testing.T) {
	for _, tc := range []struct {
		preset                    string
		hidden, layers, heads, kv int
		inter                     int
		paramsMin, paramsMax      int64
	}{
		{"tiny", 128, 2, 4, 2, 256, 9e6, 11e6},
		{"small", 1024, 8, 16, 4, 3584, 0.75e9, 0.85e9},
		{"mixtral-8x7b", 4096, 32, 32, 8, 14336, 46.6e9, 46.8e9},
	} {
		t.Run(tc.preset, func(t *testing.T) {
			p, err := PresetByName(tc.preset)
			if err != nil {
				t.Fatal(err)
			}
			want := Preset{Name: tc.preset, Hidden: tc.hidden, Layers: tc.layers, Heads: tc.heads, KVHeads: tc.kv, Intermediate: tc.inter}
			if d := cmp.Diff(want, p); d != "" {
				t.Errorf("preset (-spec +got):\n%s", d)
			}
			cfg := p.Config()
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			d := tc.hidden / tc.heads
			var params int64
			for _, ts := range tensors(cfg) {
				params += int64(ts.elements())
				var wantShape []int
				switch rest, _ := layerSuffix(ts.name); {
				case ts.name == model.EmbedTensor || ts.name == model.LMHeadTensor:
					wantShape = []int{32000, tc.hidden}
				case ts.name == model.NormTensor, rest == "input_layernorm.weight", rest == "post_attention_layernorm.weight":
					wantShape = []int{tc.hidden}
				case rest == "self_attn.q_proj.weight":
					wantShape = []int{tc.heads * d, tc.hidden}
				case rest == "self_attn.k_proj.weight", rest == "self_attn.v_proj.weight":
					wantShape = []int{tc.kv * d, tc.hidden}
				case rest == "self_attn.o_proj.weight":
					wantShape = []int{tc.hidden, tc.heads * d}
				case rest == "block_sparse_moe.gate.weight":
					wantShape = []int{8, tc.hidden}
				case regexp.MustCompile(`experts\.\d+\.w[13]\.weight$`).MatchString(rest):
					wantShape = []int{tc.inter, tc.hidden}
				case regexp.MustCompile(`experts\.\d+\.w2\.weight$`).MatchString(rest):
					wantShape = []int{tc.hidden, tc.inter}
				default:
					t.Fatalf("unexpected tensor %s", ts.name)
				}
				if !slices.Equal(ts.shape, wantShape) {
					t.Errorf("%s: shape %v, want %v", ts.name, ts.shape, wantShape)
				}
			}
			if params < tc.paramsMin || params > tc.paramsMax {
				t.Errorf("%d parameters, want within [%d, %d]", params, tc.paramsMin, tc.paramsMax)
			}
		})
	}
}

func layerSuffix(name string) (string, bool) {
	m := regexp.MustCompile(`^model\.layers\.\d+\.(.*)$`).FindStringSubmatch(name)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// specConfig is the model configuration the spec gives for a preset.
func specConfig(hidden, layers, heads, kv, inter int, torchDType string) model.Config {
	return model.Config{
		Architectures:         []string{"MixtralForCausalLM"},
		ModelType:             "mixtral",
		VocabSize:             32000,
		HiddenSize:            hidden,
		IntermediateSize:      inter,
		NumHiddenLayers:       layers,
		NumAttentionHeads:     heads,
		NumKeyValueHeads:      kv,
		NumLocalExperts:       8,
		NumExpertsPerTok:      2,
		HiddenAct:             "silu",
		MaxPositionEmbeddings: 32768,
		RMSNormEps:            1e-5,
		RopeTheta:             1e6,
		BOSTokenID:            1,
		EOSTokenID:            2,
		TorchDType:            torchDType,
	}
}

// TestConfigFile checks config.json for each preset as model.LoadConfig
// reads it, and the raw fields the spec fixes. The small preset's config is
// written alone: its weights are too big for a unit test.
func TestConfigFile(t *testing.T) {
	for _, tc := range []struct {
		preset string
		dtype  safetensors.DType
		want   model.Config
	}{
		{"tiny", safetensors.F32, specConfig(128, 2, 4, 2, 256, "float32")},
		{"tiny", safetensors.BF16, specConfig(128, 2, 4, 2, 256, "bfloat16")},
		{"small", safetensors.F32, specConfig(1024, 8, 16, 4, 3584, "float32")},
		{"small", safetensors.BF16, specConfig(1024, 8, 16, 4, 3584, "bfloat16")},
	} {
		t.Run(tc.preset+"/"+string(tc.dtype), func(t *testing.T) {
			p, _ := PresetByName(tc.preset)
			dir := t.TempDir()
			if err := writeConfig(dir, p.Config(), tc.dtype); err != nil {
				t.Fatal(err)
			}
			cfg, err := model.LoadConfig(dir)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, cfg); d != "" {
				t.Errorf("config (-spec +got):\n%s", d)
			}
			if cfg.HeadDim() != p.Hidden/p.Heads {
				t.Errorf("HeadDim = %d, want %d", cfg.HeadDim(), p.Hidden/p.Heads)
			}
			data, err := os.ReadFile(filepath.Join(dir, "config.json"))
			if err != nil {
				t.Fatal(err)
			}
			var raw map[string]any
			if err := json.Unmarshal(data, &raw); err != nil {
				t.Fatal(err)
			}
			for key, want := range map[string]any{"sliding_window": nil, "tie_word_embeddings": false, "rope_theta": 1e6, "model_type": "mixtral"} {
				if got, ok := raw[key]; !ok || got != want {
					t.Errorf("config.json %s = %v (present %v), want %v", key, got, ok, want)
				}
			}
		})
	}
}

// TestWriteLoads checks that a written checkpoint directory has the files of
// a Hugging Face checkpoint and opens with model.Load and model.LoadExperts.
func TestWriteLoads(t *testing.T) {
	dir := writeTiny(t, 1, safetensors.BF16, 1)
	m, err := model.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if d := cmp.Diff(specConfig(128, 2, 4, 2, 256, "bfloat16"), m.Config); d != "" {
		t.Errorf("loaded config (-spec +got):\n%s", d)
	}
	ex, err := model.LoadExperts(dir, m.Config, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	if ex.Len() != 2*8 {
		t.Errorf("%d experts loaded, want 16", ex.Len())
	}
	tok, err := os.ReadFile(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	if string(tok) != string(mistralv1.TokenizerJSON) {
		t.Error("tokenizer.json is not the Mistral v1 tokenizer")
	}
	var gen struct {
		BOS int `json:"bos_token_id"`
		EOS int `json:"eos_token_id"`
	}
	data, err := os.ReadFile(filepath.Join(dir, "generation_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &gen); err != nil || gen.BOS != 1 || gen.EOS != 2 {
		t.Errorf("generation_config.json = %s (%v), want bos 1, eos 2", data, err)
	}
	if _, err := os.Stat(filepath.Join(dir, safetensors.IndexFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("single-file checkpoint has an index (stat: %v)", err)
	}
}

// TestSharded checks that a checkpoint written in 3 shards has the index
// and shard files of a Hugging Face checkpoint and the same tensors, byte for
// byte, as the single file.
func TestSharded(t *testing.T) {
	single := writeTiny(t, 1, safetensors.F32, 1)
	sharded := writeTiny(t, 1, safetensors.F32, 3)
	if _, err := os.Stat(filepath.Join(sharded, safetensors.SingleFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sharded checkpoint has %s (stat: %v)", safetensors.SingleFileName, err)
	}
	x, err := safetensors.ReadIndex(filepath.Join(sharded, safetensors.IndexFileName))
	if err != nil {
		t.Fatal(err)
	}
	wantFiles := []string{safetensors.ShardFileName(1, 3), safetensors.ShardFileName(2, 3), safetensors.ShardFileName(3, 3)}
	if d := cmp.Diff(wantFiles, x.Files()); d != "" {
		t.Errorf("index shard files (-want +got):\n%s", d)
	}
	for _, f := range wantFiles {
		if _, err := os.Stat(filepath.Join(sharded, f)); err != nil {
			t.Error(err)
		}
	}
	a, b := openCheckpoint(t, single), openCheckpoint(t, sharded)
	if d := cmp.Diff(a.Names(), b.Names()); d != "" {
		t.Fatalf("tensor names (-single +sharded):\n%s", d)
	}
	var total int64
	for _, name := range a.Names() {
		ta, _ := a.Tensor(name)
		tb, err := b.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		total += int64(len(tb.Data))
		if ta.DType != tb.DType || !slices.Equal(ta.Shape, tb.Shape) || string(ta.Data) != string(tb.Data) {
			t.Errorf("%s differs between the single file and the shards", name)
		}
	}
	if x.TotalSize != total {
		t.Errorf("index total_size = %d, want %d", x.TotalSize, total)
	}
	m, err := model.Load(sharded)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
}

// TestSplit checks the shard split for every valid number of shards: n
// non-empty contiguous groups, in order, covering every tensor.
func TestSplit(t *testing.T) {
	p, _ := PresetByName("tiny")
	specs := tensors(p.Config())
	for n := 1; n <= len(specs); n++ {
		groups := split(specs, n, 4)
		if len(groups) != n {
			t.Fatalf("split into %d: %d groups", n, len(groups))
		}
		var joined []string
		for k, g := range groups {
			if len(g) == 0 {
				t.Fatalf("split into %d: group %d is empty", n, k)
			}
			for _, s := range g {
				joined = append(joined, s.name)
			}
		}
		var want []string
		for _, s := range specs {
			want = append(want, s.name)
		}
		if !slices.Equal(joined, want) {
			t.Fatalf("split into %d does not cover the tensors in order", n)
		}
	}
}

// bf16Nearest rounds f to the nearest bfloat16, ties to even, by comparing
// the two neighbouring bfloat16 values in float64: an oracle independent of
// bit tricks. It reports whether f was a tie.
func bf16Nearest(f float32) (uint16, bool) {
	lo := uint16(math.Float32bits(f) >> 16) // truncation, towards zero
	hi := lo + 1                            // next away from zero
	toF := func(h uint16) float64 { return float64(math.Float32frombits(uint32(h) << 16)) }
	dLo, dHi := math.Abs(float64(f)-toF(lo)), math.Abs(float64(f)-toF(hi))
	switch {
	case dLo < dHi:
		return lo, false
	case dHi < dLo:
		return hi, false
	case lo%2 == 0:
		return lo, true
	default:
		return hi, true
	}
}

// TestBF16Rounding checks every element of the largest tensors of a BF16
// checkpoint: float64 → float32 → bfloat16, both rounding to nearest even.
func TestBF16Rounding(t *testing.T) {
	const seed = 1
	dir := writeTiny(t, seed, safetensors.BF16, 1)
	ck := openCheckpoint(t, dir)
	ties := 0
	for _, name := range []string{model.EmbedTensor, model.LMHeadTensor, "model.layers.1.block_sparse_moe.experts.3.w2.weight"} {
		tn, err := ck.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		if tn.DType != safetensors.BF16 {
			t.Fatalf("%s: dtype %s, want BF16", name, tn.DType)
		}
		scale, _ := specScale(t, name, tn.Shape)
		n := tn.NumElements()
		for i := range n {
			f := float32(Value(name, uint64(i), seed, scale, false))
			want, tie := bf16Nearest(f)
			if tie {
				ties++
			}
			if got := binary.LittleEndian.Uint16(tn.Data[2*i:]); got != want {
				t.Fatalf("%s[%d]: bfloat16 %#04x, want %#04x (from float32 %v)", name, i, got, want, f)
			}
		}
	}
	if ties == 0 {
		t.Error("no element was a rounding tie: the test did not check ties to even")
	}
	t.Logf("%d ties to even checked", ties)
}

func TestGenerateIndependentOfGOMAXPROCS(t *testing.T) {
	ts := tensorSpec{name: "model.layers.0.self_attn.q_proj.weight", shape: []int{37, 101}, scale: 0.5}
	want := generate(ts, 3, safetensors.BF16)
	for _, procs := range []int{1, 3, 8} {
		prev := runtime.GOMAXPROCS(procs)
		got := generate(ts, 3, safetensors.BF16)
		runtime.GOMAXPROCS(prev)
		if string(got) != string(want) {
			t.Errorf("GOMAXPROCS=%d generated different bytes", procs)
		}
	}
}

// TestWriteDeterministic writes the same checkpoint twice, and another seed.
func TestWriteDeterministic(t *testing.T) {
	read := func(dir string) []byte {
		data, err := os.ReadFile(filepath.Join(dir, safetensors.SingleFileName))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	a := read(writeTiny(t, 1, safetensors.BF16, 1))
	p, _ := PresetByName("tiny")
	dir := t.TempDir()
	if err := Write(dir, Options{Preset: p, Seed: 1, DType: safetensors.BF16, Shards: 1}); err != nil {
		t.Fatal(err)
	}
	if string(read(dir)) != string(a) {
		t.Error("two writes of the same checkpoint differ")
	}
	if err := Write(dir, Options{Preset: p, Seed: 2, DType: safetensors.BF16, Shards: 1}); err != nil {
		t.Fatal(err)
	}
	if b := read(dir); string(b) == string(a) {
		t.Error("seeds 1 and 2 wrote the same checkpoint")
	}
}

func TestBadOptions(t *testing.T) {
	if _, err := PresetByName("huge"); !errors.Is(err, ErrOptions) {
		t.Errorf("PresetByName(huge) = %v, want ErrOptions", err)
	}
	tiny, _ := PresetByName("tiny")
	mixtral, _ := PresetByName("mixtral-8x7b")
	maxShards := len(TensorNames(tiny))
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"dtype F16", Options{Preset: tiny, DType: safetensors.F16, Shards: 1}, "dtype"},
		{"dtype empty", Options{Preset: tiny, Shards: 1}, "dtype"},
		{"dtype I32", Options{Preset: tiny, DType: safetensors.I32, Shards: 1}, "dtype"},
		{"shards 0", Options{Preset: tiny, DType: safetensors.F32}, "shards 0"},
		{"shards negative", Options{Preset: tiny, DType: safetensors.F32, Shards: -2}, "shards -2"},
		{"more shards than tensors", Options{Preset: tiny, DType: safetensors.F32, Shards: maxShards + 1}, "shards " + strconv.Itoa(maxShards+1)},
		{"mixtral-8x7b", Options{Preset: mixtral, DType: safetensors.BF16, Shards: 19}, "mixtral-8x7b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "out")
			err := Write(dir, tc.o)
			if !errors.Is(err, ErrOptions) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Write = %v, want ErrOptions mentioning %q", err, tc.want)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Write with bad options created %s (stat: %v)", dir, err)
			}
		})
	}
}
