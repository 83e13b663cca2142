package model_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/gguf"
	"github.com/moegrid/moegrid/model/kernel"
	"github.com/moegrid/moegrid/model/safetensors"
)

// ggufOptions says how writeGGUF converts a safetensors checkpoint.
type ggufOptions struct {
	// format is that of the 2-D weights other than the router (which,
	// like the norms, stays F32 as llama-quantize leaves it); "" is F32.
	format kernel.Format
	// dequantized stores the values format rounds the weights to, in F32:
	// the independent reference for a quantized file.
	dequantized bool
	// perExpert writes the older layout, one tensor per expert, instead of
	// stacked ffn_*_exps tensors.
	perExpert bool
	// edit changes the metadata and tensors before they are written.
	edit func(meta []gguf.KV, tensors []gguf.Tensor) ([]gguf.KV, []gguf.Tensor)
}

func f32Bytes(v []float32) []byte {
	b := make([]byte, 0, 4*len(v))
	for _, f := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(f))
	}
	return b
}

// ggmlRotary permutes the rows of a q or k projection [heads·d, cols] from
// Hugging Face's rotate-half layout to GGML's interleaved one, as llama.cpp's
// converter does: row s·d/2 + j of a head becomes row 2j + s.
func ggmlRotary(w []float32, heads, d, cols int) []float32 {
	out := make([]float32, len(w))
	for h := range heads {
		for s := range 2 {
			for j := range d / 2 {
				src, dst := h*d+s*d/2+j, h*d+2*j+s
				copy(out[dst*cols:(dst+1)*cols], w[src*cols:(src+1)*cols])
			}
		}
	}
	return out
}

// writeGGUF converts the safetensors checkpoint in dir to a GGUF file laid
// out as llama.cpp writes Mixtral, with moegrid's GGUF writer, and returns
// its path.
func writeGGUF(t *testing.T, dir string, o ggufOptions) string {
	t.Helper()
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := safetensors.OpenCheckpoint(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	values := func(name string) []float32 {
		tn, err := ck.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		v := make([]float32, tn.NumElements())
		if err := tn.ToFloat32(v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	encode := func(v []float32, rows, cols int) (gguf.TensorType, []byte) {
		if o.format == "" || o.format == kernel.F32 {
			return gguf.TypeF32, f32Bytes(v)
		}
		b, err := kernel.Quantize(o.format, rows, cols, v)
		if err != nil {
			t.Fatal(err)
		}
		if o.dequantized {
			m, err := kernel.NewMatrix(o.format, rows, cols, b)
			if err != nil {
				t.Fatal(err)
			}
			out := make([]float32, rows*cols)
			for r := range rows {
				m.Row(out[r*cols:(r+1)*cols], r)
			}
			return gguf.TypeF32, f32Bytes(out)
		}
		typ, err := gguf.ParseTensorType(string(o.format))
		if err != nil {
			t.Fatal(err)
		}
		return typ, b
	}
	var tensors []gguf.Tensor
	add := func(name string, typ gguf.TensorType, data []byte, shape ...uint64) {
		tensors = append(tensors, gguf.Tensor{TensorInfo: gguf.TensorInfo{Name: name, Type: typ, Shape: shape}, Data: data})
	}
	weight := func(name string, v []float32, rows, cols int) {
		typ, data := encode(v, rows, cols)
		add(name, typ, data, uint64(cols), uint64(rows))
	}
	norm := func(name string, v []float32) { add(name, gguf.TypeF32, f32Bytes(v), uint64(len(v))) }

	H, F, V, E, d := cfg.HiddenSize, cfg.IntermediateSize, cfg.VocabSize, cfg.NumLocalExperts, cfg.HeadDim()
	weight(model.GGUFEmbedTensor, values(model.EmbedTensor), V, H)
	norm(model.GGUFNormTensor, values(model.NormTensor))
	if !cfg.TieWordEmbeddings {
		weight(model.GGUFOutputTensor, values(model.LMHeadTensor), V, H)
	}
	for l := range cfg.NumHiddenLayers {
		hf := func(s string) string { return fmt.Sprintf("model.layers.%d.%s", l, s) }
		blk := func(kind string) string { return model.GGUFBlockTensor(l, kind) }
		norm(blk("attn_norm"), values(hf("input_layernorm.weight")))
		weight(blk("attn_q"), ggmlRotary(values(hf("self_attn.q_proj.weight")), cfg.NumAttentionHeads, d, H), cfg.QDim(), H)
		weight(blk("attn_k"), ggmlRotary(values(hf("self_attn.k_proj.weight")), cfg.NumKeyValueHeads, d, H), cfg.KVDim(), H)
		weight(blk("attn_v"), values(hf("self_attn.v_proj.weight")), cfg.KVDim(), H)
		weight(blk("attn_output"), values(hf("self_attn.o_proj.weight")), H, cfg.QDim())
		norm(blk("ffn_norm"), values(hf("post_attention_layernorm.weight")))
		add(blk("ffn_gate_inp"), gguf.TypeF32, f32Bytes(values(hf("block_sparse_moe.gate.weight"))), uint64(H), uint64(E))
		for i, kind := range []string{"ffn_gate", "ffn_down", "ffn_up"} {
			rows, cols := F, H
			if kind == "ffn_down" {
				rows, cols = H, F
			}
			if o.perExpert {
				for e := range E {
					weight(blk(fmt.Sprintf("%s.%d", kind, e)), values(model.ExpertTensors(l, e)[i]), rows, cols)
				}
				continue
			}
			var all []float32
			for e := range E {
				all = append(all, values(model.ExpertTensors(l, e)[i])...)
			}
			typ, data := encode(all, E*rows, cols)
			add(blk(kind+"_exps"), typ, data, uint64(cols), uint64(rows), uint64(E))
		}
	}
	u32 := func(v int) gguf.Value { return gguf.Uint32(uint32(v)) }
	meta := []gguf.KV{
		{Key: "general.architecture", Value: gguf.String("llama")},
		{Key: "llama.context_length", Value: u32(cfg.MaxPositionEmbeddings)},
		{Key: "llama.embedding_length", Value: u32(H)},
		{Key: "llama.block_count", Value: u32(cfg.NumHiddenLayers)},
		{Key: "llama.feed_forward_length", Value: u32(F)},
		{Key: "llama.attention.head_count", Value: u32(cfg.NumAttentionHeads)},
		{Key: "llama.attention.head_count_kv", Value: u32(cfg.NumKeyValueHeads)},
		{Key: "llama.rope.dimension_count", Value: u32(d)},
		{Key: "llama.rope.freq_base", Value: gguf.Float32(float32(cfg.RopeTheta))},
		{Key: "llama.attention.layer_norm_rms_epsilon", Value: gguf.Float32(float32(cfg.RMSNormEps))},
		{Key: "llama.expert_count", Value: u32(E)},
		{Key: "llama.expert_used_count", Value: u32(cfg.NumExpertsPerTok)},
		{Key: "tokenizer.ggml.bos_token_id", Value: u32(cfg.BOSTokenID)},
		{Key: "tokenizer.ggml.eos_token_id", Value: u32(cfg.EOSTokenID)},
	}
	if o.edit != nil {
		meta, tensors = o.edit(meta, tensors)
	}
	path := filepath.Join(t.TempDir(), "model.gguf")
	if err := gguf.WriteFile(path, meta, tensors); err != nil {
		t.Fatal(err)
	}
	return path
}

// loaded is a whole model and its experts from one checkpoint.
type loaded struct {
	m  *model.Model
	ex *model.ExpertSet
}

func loadWhole(t *testing.T, path string) loaded {
	t.Helper()
	m, err := model.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	ex, err := model.LoadExperts(path, m.Config, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ex.Close() })
	return loaded{m, ex}
}

var ggufPrompt = []int{1, 415, 2936, 9060, 285, 1142, 461, 10575}

// run returns every position's logits and the routes of the prompt.
func run(t *testing.T, m *model.Model, ex model.Experts, prompt []int) ([]float32, [][]model.Route) {
	t.Helper()
	res, err := m.Forward(context.Background(), ex, []model.Input{{Cache: m.NewCache(), Tokens: prompt, AllLogits: true}})
	if err != nil {
		t.Fatal(err)
	}
	return res.Logits[0], res.Routes
}

func greedy(t *testing.T, l loaded, prompt []int, n int) []int {
	t.Helper()
	out, err := l.m.Generate(context.Background(), l.ex, prompt, n, true, func(logits []float32) int {
		best := 0
		for i, v := range logits {
			if v > logits[best] {
				best = i
			}
		}
		return best
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func maxDiff(t *testing.T, a, b []float32) float64 {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%d logits, want %d", len(a), len(b))
	}
	var most float64
	for i := range a {
		most = max(most, math.Abs(float64(a[i])-float64(b[i])))
	}
	return most
}

func TestGGUFConfig(t *testing.T) {
	dir := tinyDir(t)
	want, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	want.TorchDType = ""
	got, err := model.LoadConfig(writeGGUF(t, dir, ggufOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("config from GGUF metadata (-config.json +gguf):\n%s", diff)
	}
}

// A GGUF file of the same F32 weights, q and k permuted as llama.cpp does,
// computes exactly what the safetensors checkpoint does, in either expert
// layout, and its parts mix with the safetensors checkpoint's.
func TestGGUFMatchesSafetensors(t *testing.T) {
	dir := tinyDir(t)
	ref := loadWhole(t, dir)
	wantLogits, wantRoutes := run(t, ref.m, ref.ex, ggufPrompt)
	for _, tc := range []struct {
		name string
		o    ggufOptions
	}{
		{"stacked", ggufOptions{}},
		{"per-expert", ggufOptions{perExpert: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := loadWhole(t, writeGGUF(t, dir, tc.o))
			for _, c := range []struct {
				name string
				m    *model.Model
				ex   model.Experts
			}{
				{"gguf", g.m, g.ex},
				{"gguf model, safetensors experts", g.m, ref.ex},
				{"safetensors model, gguf experts", ref.m, g.ex},
			} {
				logits, routes := run(t, c.m, c.ex, ggufPrompt)
				for i := range logits {
					if math.Float32bits(logits[i]) != math.Float32bits(wantLogits[i]) {
						t.Fatalf("%s: logit %d = %v, safetensors %v", c.name, i, logits[i], wantLogits[i])
					}
				}
				if diff := cmp.Diff(wantRoutes, routes); diff != "" {
					t.Fatalf("%s: routes differ:\n%s", c.name, diff)
				}
			}
		})
	}
}

// A quantized file runs and equals, within 1e-3, the model of its
// dequantized weights, with the same expert choices and greedy tokens; its
// expert sizes are the quantized bytes.
func TestGGUFQuantized(t *testing.T) {
	dir := tinyDir(t)
	for _, f := range []kernel.Format{kernel.Q8_0, kernel.Q4_0, kernel.BF16, kernel.F16} {
		t.Run(string(f), func(t *testing.T) {
			path := writeGGUF(t, dir, ggufOptions{format: f})
			q := loadWhole(t, path)
			ref := loadWhole(t, writeGGUF(t, dir, ggufOptions{format: f, dequantized: true}))
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
			if got := q.m.Layers[0].Q.Format(); got != f {
				t.Errorf("attn_q runs as %s, want %s", got, f)
			}

			cfg := q.m.Config
			want, err := cfg.ExpertLayerBytes(f)
			if err != nil {
				t.Fatal(err)
			}
			got, err := model.CheckpointExpertLayerBytes(path, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("CheckpointExpertLayerBytes = %d, want %d", got, want)
			}
			if got, want := q.ex.Bytes(), want*int64(cfg.NumHiddenLayers*cfg.NumLocalExperts); got != want {
				t.Errorf("ExpertSet.Bytes = %d, want %d", got, want)
			}
		})
	}
}

// cmpRouteExperts compares routes by their experts only: the weights of a
// quantized model differ from the reference's in the last bits.
var cmpRouteExperts = cmp.Transformer("experts", func(r model.Route) []int { return r.Experts })

func TestGGUFExpertSubset(t *testing.T) {
	dir := tinyDir(t)
	path := writeGGUF(t, dir, ggufOptions{format: kernel.Q8_0})
	cfg, err := model.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	set, err := model.LoadExperts(path, cfg, func(l, e int) bool { return l == 1 && e%3 == 0 })
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	if set.Len() != 3 || !set.Has(1, 6) || set.Has(0, 0) {
		t.Errorf("holds %d experts, Has(1, 6) = %v, Has(0, 0) = %v; want 3, true, false", set.Len(), set.Has(1, 6), set.Has(0, 0))
	}
	per, err := cfg.ExpertLayerBytes(kernel.Q8_0)
	if err != nil {
		t.Fatal(err)
	}
	if set.Bytes() != 3*per {
		t.Errorf("Bytes = %d, want %d", set.Bytes(), 3*per)
	}
	H := cfg.HiddenSize
	err = set.Forward(context.Background(), 0, []model.ExpertBatch{{Expert: 0, Rows: 1, In: make([]float32, H), Out: make([]float32, H)}})
	if !errors.Is(err, model.ErrExpertNotHeld) {
		t.Errorf("Forward of an expert not held: %v, want ErrExpertNotHeld", err)
	}
}

// splitGGUF rewrites the GGUF file at path as parts files, as gguf-split
// does, and returns the path of the first.
func splitGGUF(t *testing.T, path string, parts int) string {
	t.Helper()
	ck, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	names := ck.Names()
	prefix := filepath.Join(t.TempDir(), "split")
	for i := range parts {
		meta := []gguf.KV{
			{Key: gguf.KeySplitNo, Value: gguf.Uint16(uint16(i))},
			{Key: gguf.KeySplitCount, Value: gguf.Uint16(uint16(parts))},
		}
		if i == 0 {
			meta = append(ck.Metadata().All(), append(meta, gguf.KV{Key: gguf.KeySplitTensorsCount, Value: gguf.Int32(int32(len(names)))})...)
		}
		var tensors []gguf.Tensor
		for _, name := range names[i*len(names)/parts : (i+1)*len(names)/parts] {
			tn, err := ck.Tensor(name)
			if err != nil {
				t.Fatal(err)
			}
			tensors = append(tensors, tn)
		}
		if err := gguf.WriteFile(gguf.SplitPath(prefix, i+1, parts), meta, tensors); err != nil {
			t.Fatal(err)
		}
	}
	return gguf.SplitPath(prefix, 1, parts)
}

func TestGGUFSplit(t *testing.T) {
	path := writeGGUF(t, tinyDir(t), ggufOptions{format: kernel.Q8_0})
	first := splitGGUF(t, path, 3)
	whole, parts := loadWhole(t, path), loadWhole(t, first)
	wantLogits, _ := run(t, whole.m, whole.ex, ggufPrompt)
	logits, _ := run(t, parts.m, parts.ex, ggufPrompt)
	if d := maxDiff(t, logits, wantLogits); d != 0 {
		t.Errorf("split model's logits differ by %g", d)
	}
	fpWhole, err := model.Fingerprint(path)
	if err != nil {
		t.Fatal(err)
	}
	fpParts, err := model.Fingerprint(first)
	if err != nil {
		t.Fatal(err)
	}
	if fpWhole != fpParts {
		t.Errorf("fingerprint %s of the split model, %s of the whole file", fpParts, fpWhole)
	}
	bytesWhole, err := model.CheckpointExpertLayerBytes(path, whole.m.Config)
	if err != nil {
		t.Fatal(err)
	}
	bytesParts, err := model.CheckpointExpertLayerBytes(first, whole.m.Config)
	if err != nil {
		t.Fatal(err)
	}
	if bytesWhole != bytesParts {
		t.Errorf("expert-layer bytes %d of the split model, %d of the whole file", bytesParts, bytesWhole)
	}
}

func TestGGUFFingerprint(t *testing.T) {
	dir := tinyDir(t)
	fp := func(path string) string {
		t.Helper()
		s, err := model.Fingerprint(path)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	f32, again, q8 := writeGGUF(t, dir, ggufOptions{}), writeGGUF(t, dir, ggufOptions{}), writeGGUF(t, dir, ggufOptions{format: kernel.Q8_0})
	if fp(f32) != fp(again) {
		t.Error("the same checkpoint written twice has two fingerprints")
	}
	if fp(f32) == fp(q8) || fp(f32) == fp(dir) {
		t.Error("F32 and Q8_0 GGUF files, or a GGUF file and its safetensors checkpoint, share a fingerprint")
	}
}

// edits for the bad-file cases.
func setMeta(key string, v gguf.Value) func([]gguf.KV, []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
	return func(meta []gguf.KV, tensors []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
		for i := range meta {
			if meta[i].Key == key {
				meta[i].Value = v
				return meta, tensors
			}
		}
		return append(meta, gguf.KV{Key: key, Value: v}), tensors
	}
}

func dropMeta(key string) func([]gguf.KV, []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
	return func(meta []gguf.KV, tensors []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
		return slices.DeleteFunc(meta, func(kv gguf.KV) bool { return kv.Key == key }), tensors
	}
}

func dropTensor(name string) func([]gguf.KV, []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
	return func(meta []gguf.KV, tensors []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
		return meta, slices.DeleteFunc(tensors, func(tn gguf.Tensor) bool { return tn.Name == name })
	}
}

// halveTensor keeps the first half of a tensor's last dimension.
func halveTensor(name string) func([]gguf.KV, []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
	return func(meta []gguf.KV, tensors []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
		for i, tn := range tensors {
			if tn.Name == name {
				shape := slices.Clone(tn.Shape)
				shape[len(shape)-1] /= 2
				tensors[i].Shape = shape
				tensors[i].Data = tn.Data[:len(tn.Data)/2]
			}
		}
		return meta, tensors
	}
}

func TestGGUFBadFiles(t *testing.T) {
	dir := tinyDir(t)
	for _, tc := range []struct {
		name string
		edit func([]gguf.KV, []gguf.Tensor) ([]gguf.KV, []gguf.Tensor)
		is   error
		want string
	}{
		{"other architecture", setMeta("general.architecture", gguf.String("gpt2")), model.ErrConfig, `general.architecture "gpt2" is not supported`},
		{"no architecture", dropMeta("general.architecture"), model.ErrConfig, "general.architecture"},
		{"dense llama", dropMeta("llama.expert_count"), model.ErrConfig, "llama.expert_count is missing: a dense model"},
		{"no layer count", dropMeta("llama.block_count"), model.ErrConfig, "llama.block_count"},
		{"more layers than tensors", setMeta("llama.block_count", gguf.Uint32(1<<20)), model.ErrConfig, "llama.block_count 1048576, but the file holds only 23 tensors"},
		{"eps of another type", setMeta("llama.attention.layer_norm_rms_epsilon", gguf.String("1e-5")), model.ErrConfig, "llama.attention.layer_norm_rms_epsilon"},
		{"partial rotary", setMeta("llama.rope.dimension_count", gguf.Uint32(16)), model.ErrConfig, "llama.rope.dimension_count 16"},
		{"rope scaling", setMeta("llama.rope.scaling.type", gguf.String("yarn")), model.ErrConfig, `llama.rope.scaling.type "yarn"`},
		{"more used experts than experts", setMeta("llama.expert_used_count", gguf.Uint32(9)), model.ErrConfig, "num_experts_per_tok (9) exceeds num_local_experts (8)"},
		{"missing attention tensor", dropTensor("blk.1.attn_k.weight"), model.ErrWeights, `"blk.1.attn_k.weight"`},
		{"missing embedding", dropTensor(model.GGUFEmbedTensor), model.ErrConfig, `tensor "token_embd.weight"`},
		{"missing experts", dropTensor("blk.0.ffn_up_exps.weight"), model.ErrWeights, "neither blk.0.ffn_up_exps.weight nor blk.0.ffn_up.0.weight"},
		{"norm of the wrong shape", halveTensor("blk.0.ffn_norm.weight"), model.ErrWeights, "blk.0.ffn_norm.weight has GGML shape [64], want [128]"},
		{"router of the wrong shape", halveTensor("blk.1.ffn_gate_inp.weight"), model.ErrWeights, "blk.1.ffn_gate_inp.weight has GGML shape [128 4], want [128 8]"},
		{"too few stacked experts", halveTensor("blk.1.ffn_down_exps.weight"), model.ErrWeights, "blk.1.ffn_down_exps.weight has GGML shape [256 128 4], want [256 128 8]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeGGUF(t, dir, ggufOptions{edit: tc.edit})
			err := loadAll(path)
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %v containing %q", err, tc.is, tc.want)
			}
		})
	}
	t.Run("not GGUF", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "x.gguf")
		if err := os.WriteFile(path, []byte("GGUX not a model at all, but long enough"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := loadAll(path); !errors.Is(err, gguf.ErrMagic) {
			t.Errorf("error %v, want gguf.ErrMagic", err)
		}
	})
}

// loadAll loads the configuration, the model and every expert of path and
// returns the first error.
func loadAll(path string) error {
	cfg, err := model.LoadConfig(path)
	if err != nil {
		return err
	}
	m, err := model.Load(path)
	if err != nil {
		return err
	}
	m.Close()
	if _, err := model.CheckpointExpertLayerBytes(path, cfg); err != nil {
		return err
	}
	ex, err := model.LoadExperts(path, cfg, nil)
	if err != nil {
		return err
	}
	return ex.Close()
}

func TestIsGGUF(t *testing.T) {
	dir := t.TempDir()
	gdir := filepath.Join(dir, "dir.gguf")
	if err := os.Mkdir(gdir, 0o755); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]bool{
		"m.gguf": true, "M.GGUF": true, "m-00001-of-00003.gguf": true, "m.safetensors": false, "m": false, gdir: false, dir: false,
	} {
		if got := model.IsGGUF(path); got != want {
			t.Errorf("IsGGUF(%q) = %v, want %v", path, got, want)
		}
	}
	for name, want := range map[string]bool{
		"blk.0.ffn_up_exps.weight": true, "blk.12.ffn_gate.7.weight": true, "blk.1.ffn_down.0.weight": true,
		"blk.0.ffn_gate_inp.weight": false, "blk.0.attn_q.weight": false, "blk.01.ffn_up_exps.weight": false,
		"blk.0.ffn_up.x.weight": false, "token_embd.weight": false, "blk.0.ffn_up_exps": false,
	} {
		if got := model.IsGGUFExpertTensor(name); got != want {
			t.Errorf("IsGGUFExpertTensor(%q) = %v, want %v", name, got, want)
		}
	}
}

// llamaCppTwin writes the safetensors checkpoint that
// testdata/gguf/small-*.gguf were converted from: the tiny checkpoint
// (seed 1, F32) cut down to its first layer, first 4 experts and first 512
// tokens, so that llama.cpp's files stay small.
func llamaCppTwin(t *testing.T) string {
	t.Helper()
	const vocab, experts = 512, 4
	src := tinyDir(t)
	data, err := os.ReadFile(filepath.Join(src, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["vocab_size"], cfg["num_hidden_layers"], cfg["num_local_experts"] = vocab, 1, experts
	out := t.TempDir()
	if data, err = json.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	ck, err := safetensors.OpenCheckpoint(src, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	var tensors []safetensors.WriteTensor
	for _, name := range ck.Names() {
		if strings.HasPrefix(name, "model.layers.") && !strings.HasPrefix(name, "model.layers.0.") {
			continue
		}
		if _, e, ok := model.ParseExpertTensor(name); ok && e >= experts {
			continue
		}
		tn, err := ck.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		w := safetensors.WriteTensor{Name: name, DType: tn.DType, Shape: slices.Clone(tn.Shape), Data: tn.Data}
		rows := map[string]int{model.EmbedTensor: vocab, model.LMHeadTensor: vocab, "model.layers.0.block_sparse_moe.gate.weight": experts}
		if n, ok := rows[name]; ok {
			w.Shape[0] = n
			w.Data = tn.Data[:n*tn.Shape[1]*4]
		}
		tensors = append(tensors, w)
	}
	if err := safetensors.WriteFile(filepath.Join(out, "model.safetensors"), tensors, nil); err != nil {
		t.Fatal(err)
	}
	return out
}

// testdata/gguf/small-f32.gguf was written by llama.cpp's gguf-py from
// llamaCppTwin's checkpoint (shared/bench/to_gguf.py, which permutes q and k
// as convert_hf_to_gguf.py does), and small-q8_0.gguf from it by
// llama-quantize Q8_0 (llama.cpp c392e50).
func TestGGUFLlamaCpp(t *testing.T) {
	twin := loadWhole(t, llamaCppTwin(t))
	prompt := []int{1, 415, 298, 306, 285, 511, 17, 259}
	wantLogits, wantRoutes := run(t, twin.m, twin.ex, prompt)
	wantTokens := greedy(t, twin, prompt, 16)

	f32Path := filepath.Join("testdata", "gguf", "small-f32.gguf")
	f32 := loadWhole(t, f32Path)
	logits, routes := run(t, f32.m, f32.ex, prompt)
	if d := maxDiff(t, logits, wantLogits); d > 1e-4 {
		t.Errorf("llama.cpp's F32 file: logits differ from the safetensors model's by %g", d)
	} else {
		t.Logf("llama.cpp's F32 file: logits within %g of the safetensors model's", d)
	}
	if diff := cmp.Diff(wantRoutes, routes, cmpRouteExperts); diff != "" {
		t.Errorf("llama.cpp's F32 file: expert choices differ:\n%s", diff)
	}
	if got := greedy(t, f32, prompt, 16); !slices.Equal(got, wantTokens) {
		t.Errorf("llama.cpp's F32 file: greedy tokens %v, safetensors model %v", got, wantTokens)
	}

	tok, err := model.LoadTokenizer(f32Path)
	if err != nil {
		t.Fatal(err)
	}
	if tok.VocabSize() != 512 || tok.BOS() != 1 || tok.EOS() != 2 {
		t.Errorf("tokenizer from the file: %d pieces, BOS %d, EOS %d; want 512, 1, 2", tok.VocabSize(), tok.BOS(), tok.EOS())
	}

	// The Q8_0 file against the model of its own dequantized weights, and
	// its bytes against moegrid's quantizer on the F32 file's weights.
	q8Path := filepath.Join("testdata", "gguf", "small-q8_0.gguf")
	q8 := loadWhole(t, q8Path)
	ref := loadWhole(t, dequantizeGGUF(t, q8Path))
	logits, routes = run(t, q8.m, q8.ex, prompt)
	wantLogits, wantRoutes = run(t, ref.m, ref.ex, prompt)
	if d := maxDiff(t, logits, wantLogits); d > 1e-3 {
		t.Errorf("llama.cpp's Q8_0 file: logits differ from its dequantized weights' by %g", d)
	} else {
		t.Logf("llama.cpp's Q8_0 file: logits within %g of its dequantized weights'", d)
	}
	if diff := cmp.Diff(wantRoutes, routes, cmpRouteExperts); diff != "" {
		t.Errorf("llama.cpp's Q8_0 file: expert choices differ:\n%s", diff)
	}
	if got, want := greedy(t, q8, prompt, 16), greedy(t, ref, prompt, 16); !slices.Equal(got, want) {
		t.Errorf("llama.cpp's Q8_0 file: greedy tokens %v, dequantized weights %v", got, want)
	}
	sameQuantization(t, f32Path, q8Path)
}

// dequantizeGGUF writes a copy of the GGUF file at path with every tensor
// widened or dequantized to F32, and returns its path.
func dequantizeGGUF(t *testing.T, path string) string {
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
		tensors = append(tensors, gguf.Tensor{
			TensorInfo: gguf.TensorInfo{Name: name, Type: gguf.TypeF32, Shape: tn.Shape},
			Data:       f32Bytes(widen(t, tn)),
		})
	}
	out := filepath.Join(t.TempDir(), "dequantized.gguf")
	if err := gguf.WriteFile(out, ck.Metadata().All(), tensors); err != nil {
		t.Fatal(err)
	}
	return out
}

// widen returns the values of a tensor of any format, as rows of its first
// GGML dimension.
func widen(t *testing.T, tn gguf.Tensor) []float32 {
	t.Helper()
	cols := int(tn.Shape[0])
	rows := int(tn.Elements()) / cols
	flat := tn
	flat.Shape = []uint64{uint64(cols), uint64(rows)}
	m, err := flat.Matrix()
	if err != nil {
		t.Fatal(err)
	}
	v := make([]float32, rows*cols)
	for r := range rows {
		m.Row(v[r*cols:(r+1)*cols], r)
	}
	return v
}

// sameQuantization checks that every quantized tensor of the file at qPath
// holds exactly the bytes moegrid's quantizer makes of the same tensor in
// the F32 file at f32Path.
func sameQuantization(t *testing.T, f32Path, qPath string) {
	t.Helper()
	fck, err := gguf.Open(f32Path)
	if err != nil {
		t.Fatal(err)
	}
	defer fck.Close()
	qck, err := gguf.Open(qPath)
	if err != nil {
		t.Fatal(err)
	}
	defer qck.Close()
	quantized := 0
	for _, name := range qck.Names() {
		qt, err := qck.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		if qt.Type == gguf.TypeF32 {
			continue
		}
		ft, err := fck.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := qt.Format()
		if err != nil {
			t.Fatal(err)
		}
		cols := int(ft.Shape[0])
		got, err := kernel.Quantize(f, int(ft.Elements())/cols, cols, widen(t, ft))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, qt.Data) {
			t.Errorf("%s: moegrid's %s bytes differ from llama-quantize's", name, f)
		}
		quantized++
	}
	if quantized == 0 {
		t.Error("the quantized file has no quantized tensors")
	}
}

// microGGUF writes a GGUF model of a few kilobytes, hidden size 32, with
// the metadata llama.cpp would give it overridden by the fuzzer's values.
func microGGUF(t *testing.T, arch string, sizes [9]uint32, eps float32) string {
	t.Helper()
	const H, F, V, E, nh, nkv, d = 32, 64, 40, 2, 2, 1, 16
	var tensors []gguf.Tensor
	seed := 0
	add := func(name string, shape ...uint64) {
		n := 1
		for _, s := range shape {
			n *= int(s)
		}
		v := make([]float32, n)
		for i := range v {
			seed++
			v[i] = float32(math.Sin(float64(seed))) / 4
		}
		tensors = append(tensors, gguf.Tensor{TensorInfo: gguf.TensorInfo{Name: name, Type: gguf.TypeF32, Shape: shape}, Data: f32Bytes(v)})
	}
	add(model.GGUFEmbedTensor, H, V)
	add(model.GGUFNormTensor, H)
	blk := func(kind string) string { return model.GGUFBlockTensor(0, kind) }
	add(blk("attn_norm"), H)
	add(blk("attn_q"), H, nh*d)
	add(blk("attn_k"), H, nkv*d)
	add(blk("attn_v"), H, nkv*d)
	add(blk("attn_output"), nh*d, H)
	add(blk("ffn_norm"), H)
	add(blk("ffn_gate_inp"), H, E)
	add(blk("ffn_gate_exps"), H, F, E)
	add(blk("ffn_up_exps"), H, F, E)
	add(blk("ffn_down_exps"), F, H, E)
	keys := [9]string{"block_count", "expert_count", "expert_used_count", "embedding_length", "feed_forward_length",
		"attention.head_count", "attention.head_count_kv", "attention.key_length", "context_length"}
	meta := []gguf.KV{
		{Key: "general.architecture", Value: gguf.String(arch)},
		{Key: arch + ".attention.layer_norm_rms_epsilon", Value: gguf.Float32(eps)},
	}
	for i, k := range keys {
		meta = append(meta, gguf.KV{Key: arch + "." + k, Value: gguf.Uint32(sizes[i])})
	}
	path := filepath.Join(t.TempDir(), "micro.gguf")
	if err := gguf.WriteFile(path, meta, tensors); err != nil {
		t.Fatal(err)
	}
	return path
}

// The fuzzer's first seed is the micro model's true metadata, which loads.
func TestMicroGGUFLoads(t *testing.T) {
	if err := loadAll(microGGUF(t, "llama", [9]uint32{1, 2, 1, 32, 64, 2, 1, 16, 64}, 1e-5)); err != nil {
		t.Fatal(err)
	}
}

// FuzzGGUFMetadata loads a model whose metadata may lie about its shape:
// every load fails with an error or gives a model that runs.
func FuzzGGUFMetadata(f *testing.F) {
	f.Add("llama", uint32(1), uint32(2), uint32(1), uint32(32), uint32(64), uint32(2), uint32(1), uint32(16), uint32(64), float32(1e-5))
	f.Add("llama", uint32(1), uint32(2), uint32(2), uint32(32), uint32(64), uint32(2), uint32(1), uint32(0), uint32(8), float32(1e-6))
	f.Add("mixtral", uint32(2), uint32(2), uint32(1), uint32(32), uint32(64), uint32(2), uint32(1), uint32(16), uint32(64), float32(1e-5))
	f.Add("llama", uint32(1), uint32(4), uint32(1), uint32(32), uint32(64), uint32(4), uint32(2), uint32(8), uint32(64), float32(-1))
	f.Add("llama", uint32(1), uint32(2), uint32(1), uint32(1<<31), uint32(64), uint32(0), uint32(0), uint32(16), uint32(0), float32(1e-5))
	f.Fuzz(func(t *testing.T, arch string, blocks, experts, used, embd, ff, heads, kv, keyLen, ctx uint32, eps float32) {
		if len(arch) > 64 {
			return
		}
		path := microGGUF(t, arch, [9]uint32{blocks, experts, used, embd, ff, heads, kv, keyLen, ctx}, eps)
		if err := loadAll(path); err != nil {
			return
		}
		l := loadWhole(t, path)
		if _, err := l.m.Forward(context.Background(), l.ex, []model.Input{{Cache: l.m.NewCache(), Tokens: []int{1}}}); err != nil {
			t.Fatalf("a model that loads fails to run: %v", err)
		}
	})
}
