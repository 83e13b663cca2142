package model_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/sample"
	"github.com/moegrid/moegrid/model/synth"
)

// tinyDir is the tiny F32 checkpoint, seed 1, in one file.
func tinyDir(t *testing.T) string {
	t.Helper()
	return checkpoint(t, "tiny", 1, safetensors.F32, 1)
}

// withConfig copies the checkpoint in dir to a temporary directory and
// rewrites its config.json with edit; it returns the copy.
func withConfig(t *testing.T, dir string, edit func(cfg map[string]any)) string {
	t.Helper()
	out := t.TempDir()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() || e.Name() == "config.json" {
			continue
		}
		copyFile(t, filepath.Join(out, e.Name()), filepath.Join(dir, e.Name()))
	}
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	edit(cfg)
	if data, err = json.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

func copyFile(t *testing.T, dst, src string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// randomTokens returns n token ids, BOS first, the rest pseudo-random.
func randomTokens(seed uint64, n int) []int {
	rng := rand.New(rand.NewPCG(seed, 99))
	ids := make([]int, n)
	ids[0] = 1
	for i := 1; i < n; i++ {
		ids[i] = 3 + rng.IntN(32000-3)
	}
	return ids
}

func mustForward(t *testing.T, lm local, experts model.Experts, inputs ...model.Input) *model.Result {
	t.Helper()
	res, err := lm.Forward(t.Context(), experts, inputs)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// bitDiff returns the first index at which a and b differ in their bits, or
// -1 if they are bit-identical.
func bitDiff(a, b []float32) int {
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i
		}
	}
	return -1
}

func requireSameBits(t *testing.T, what string, want, got []float32) {
	t.Helper()
	if i := bitDiff(want, got); i >= 0 {
		if i >= len(want) || i >= len(got) {
			t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
		}
		t.Fatalf("%s: first difference at %d: %v, want %v", what, i, got[i], want[i])
	}
}

func TestForwardInputErrors(t *testing.T) {
	lm := loadLocal(t, tinyDir(t))
	short := loadLocal(t, withConfig(t, tinyDir(t), func(c map[string]any) { c["max_position_embeddings"] = 8 }))
	if short.Config.MaxPositionEmbeddings != 8 {
		t.Fatalf("max_position_embeddings = %d, want 8", short.Config.MaxPositionEmbeddings)
	}
	for _, tc := range []struct {
		name   string
		lm     local
		inputs func(c1, c2 *model.Cache) []model.Input
		want   string
	}{
		{"no tokens", lm, func(c1, _ *model.Cache) []model.Input {
			return []model.Input{{Cache: c1}}
		}, "input 0 has no tokens"},
		{"second input empty", lm, func(c1, c2 *model.Cache) []model.Input {
			return []model.Input{{Cache: c1, Tokens: []int{1}}, {Cache: c2, Tokens: []int{}}}
		}, "input 1 has no tokens"},
		{"id = vocab", lm, func(c1, _ *model.Cache) []model.Input {
			return []model.Input{{Cache: c1, Tokens: []int{1, 32000}}}
		}, "token id 32000"},
		{"negative id", lm, func(c1, c2 *model.Cache) []model.Input {
			return []model.Input{{Cache: c1, Tokens: []int{1}}, {Cache: c2, Tokens: []int{1, 5, -1}}}
		}, "input 1: token id -1"},
		{"shared cache", lm, func(c1, _ *model.Cache) []model.Input {
			return []model.Input{{Cache: c1, Tokens: []int{1}}, {Cache: c1, Tokens: []int{2}}}
		}, "share a cache"},
		{"past max_position_embeddings", short, func(c1, _ *model.Cache) []model.Input {
			return []model.Input{{Cache: c1, Tokens: randomTokens(1, 9)}}
		}, "max_position_embeddings 8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c1, c2 := tc.lm.NewCache(), tc.lm.NewCache()
			_, err := tc.lm.Forward(t.Context(), tc.lm.experts, tc.inputs(c1, c2))
			if !errors.Is(err, model.ErrInput) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Forward error = %v, want ErrInput containing %q", err, tc.want)
			}
			if c1.Len() != 0 || c2.Len() != 0 {
				t.Errorf("cache lengths %d, %d after a refused step, want 0", c1.Len(), c2.Len())
			}
		})
	}

	t.Run("continuing past max_position_embeddings", func(t *testing.T) {
		c := short.NewCache()
		ids := randomTokens(2, 9)
		mustForward(t, short, short.experts, model.Input{Cache: c, Tokens: ids[:5]})
		mustForward(t, short, short.experts, model.Input{Cache: c, Tokens: ids[5:8]}) // ends exactly at the limit
		_, err := short.Forward(t.Context(), short.experts, []model.Input{{Cache: c, Tokens: ids[8:]}})
		if !errors.Is(err, model.ErrInput) || !strings.Contains(err.Error(), "position 9") {
			t.Errorf("Forward error = %v, want ErrInput for position 9", err)
		}
		if c.Len() != 8 {
			t.Errorf("cache length %d, want 8", c.Len())
		}
	})
}

// TestChunkedPrefill checks that a prompt prefilled in chunks gives the
// same bits as prefilled at once: every position's logits and routes, and
// the caches, which then continue identically.
func TestChunkedPrefill(t *testing.T) {
	lm := loadLocal(t, tinyDir(t))
	ids := randomTokens(3, 20)
	whole := lm.NewCache()
	once := mustForward(t, lm, lm.experts, model.Input{Cache: whole, Tokens: ids, AllLogits: true})

	chunked := lm.NewCache()
	var logits []float32
	routes := make([][]model.Route, lm.Config.NumHiddenLayers)
	pos := 0
	for _, n := range []int{7, 1, 5, 7} {
		res := mustForward(t, lm, lm.experts, model.Input{Cache: chunked, Tokens: ids[pos : pos+n], AllLogits: true})
		logits = append(logits, res.Logits[0]...)
		for l := range routes {
			routes[l] = append(routes[l], res.Routes[l]...)
		}
		pos += n
		if chunked.Len() != pos {
			t.Fatalf("cache length %d after %d tokens", chunked.Len(), pos)
		}
	}
	requireSameBits(t, "logits of every position", once.Logits[0], logits)
	if d := cmp.Diff(once.Routes, routes); d != "" {
		t.Errorf("routes (-at once +chunked):\n%s", d)
	}

	next := sample.Greedy(logits[(len(ids)-1)*lm.Config.VocabSize:])
	for step := range 4 {
		a := mustForward(t, lm, lm.experts, model.Input{Cache: whole, Tokens: []int{next}})
		b := mustForward(t, lm, lm.experts, model.Input{Cache: chunked, Tokens: []int{next}})
		requireSameBits(t, fmt.Sprintf("decode step %d", step), a.Logits[0], b.Logits[0])
		next = sample.Greedy(a.Logits[0])
	}
}

// TestBatchedEqualsSequential runs three sequences in one Forward call and
// one at a time: every input's logits and routes must be bit-identical.
func TestBatchedEqualsSequential(t *testing.T) {
	lm := loadLocal(t, tinyDir(t))
	steps := [][][]int{ // steps[s][i]: tokens of sequence i in step s
		{randomTokens(4, 5), randomTokens(5, 1), randomTokens(6, 9)},
		{{100}, {200, 300}, {400}},
		{{7}, {8}, {9, 10, 11}},
	}
	batched := []*model.Cache{lm.NewCache(), lm.NewCache(), lm.NewCache()}
	alone := []*model.Cache{lm.NewCache(), lm.NewCache(), lm.NewCache()}
	for s, step := range steps {
		var inputs []model.Input
		for i, ids := range step {
			inputs = append(inputs, model.Input{Cache: batched[i], Tokens: ids, AllLogits: i == 0})
		}
		res := mustForward(t, lm, lm.experts, inputs...)
		row := 0
		for i, ids := range step {
			want := mustForward(t, lm, lm.experts, model.Input{Cache: alone[i], Tokens: ids, AllLogits: i == 0})
			requireSameBits(t, fmt.Sprintf("step %d sequence %d logits", s, i), want.Logits[0], res.Logits[i])
			for l := range res.Routes {
				got := res.Routes[l][row : row+len(ids)]
				if d := cmp.Diff(want.Routes[l], got); d != "" {
					t.Errorf("step %d sequence %d layer %d routes (-alone +batched):\n%s", s, i, l, d)
				}
			}
			row += len(ids)
			if batched[i].Len() != alone[i].Len() {
				t.Errorf("step %d sequence %d: cache length %d, alone %d", s, i, batched[i].Len(), alone[i].Len())
			}
		}
		for l, rs := range res.Routes {
			for r, rt := range rs {
				if len(rt.Experts) != 2 || rt.Experts[0] == rt.Experts[1] || rt.Weights[0] < rt.Weights[1] ||
					math.Abs(float64(rt.Weights[0]+rt.Weights[1])-1) > 1e-6 {
					t.Errorf("step %d layer %d row %d: route %+v", s, l, r, rt)
				}
			}
		}
	}
}

// failingExperts is an Experts that fails at one layer and delegates the
// others.
type failingExperts struct {
	inner model.Experts
	layer int
}

var errExpertsDown = errors.New("experts down")

func (f failingExperts) Forward(ctx context.Context, layer int, batches []model.ExpertBatch) error {
	if layer == f.layer {
		return errExpertsDown
	}
	return f.inner.Forward(ctx, layer, batches)
}

// TestFailedForwardKeepsCaches checks that a step that fails (experts at a
// layer, or a cancelled context) leaves every cache as it was, and that the
// step then succeeds with the same bits as if it had never failed.
func TestFailedForwardKeepsCaches(t *testing.T) {
	lm := loadLocal(t, tinyDir(t))
	prompts := [][]int{randomTokens(7, 6), randomTokens(8, 3)}
	step := [][]int{{11, 12}, {13}}
	prefill := func() []*model.Cache {
		cs := []*model.Cache{lm.NewCache(), lm.NewCache()}
		mustForward(t, lm, lm.experts, model.Input{Cache: cs[0], Tokens: prompts[0]}, model.Input{Cache: cs[1], Tokens: prompts[1]})
		return cs
	}
	inputs := func(cs []*model.Cache) []model.Input {
		return []model.Input{{Cache: cs[0], Tokens: step[0], AllLogits: true}, {Cache: cs[1], Tokens: step[1]}}
	}
	control, caches := prefill(), prefill()
	want := mustForward(t, lm, lm.experts, inputs(control)...)

	for _, layer := range []int{0, 1} {
		_, err := lm.Forward(t.Context(), failingExperts{lm.experts, layer}, inputs(caches))
		if !errors.Is(err, errExpertsDown) || !strings.Contains(err.Error(), fmt.Sprintf("layer %d", layer)) {
			t.Errorf("failing at layer %d: error %v, want errExpertsDown naming the layer", layer, err)
		}
		for i, c := range caches {
			if c.Len() != len(prompts[i]) {
				t.Errorf("failing at layer %d: cache %d length %d, want %d", layer, i, c.Len(), len(prompts[i]))
			}
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := lm.Forward(ctx, lm.experts, inputs(caches)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: error %v, want context.Canceled", err)
	}
	for i, c := range caches {
		if c.Len() != len(prompts[i]) {
			t.Errorf("after cancel: cache %d length %d, want %d", i, c.Len(), len(prompts[i]))
		}
	}

	got := mustForward(t, lm, lm.experts, inputs(caches)...)
	for i := range want.Logits {
		requireSameBits(t, fmt.Sprintf("input %d logits after failures", i), want.Logits[i], got.Logits[i])
	}
	a := mustForward(t, lm, lm.experts, model.Input{Cache: control[0], Tokens: []int{42}}, model.Input{Cache: control[1], Tokens: []int{43}})
	b := mustForward(t, lm, lm.experts, model.Input{Cache: caches[0], Tokens: []int{42}}, model.Input{Cache: caches[1], Tokens: []int{43}})
	for i := range a.Logits {
		requireSameBits(t, fmt.Sprintf("input %d next step", i), a.Logits[i], b.Logits[i])
	}
}

// TestCacheTruncate checks that a truncated cache continues as if the
// dropped tokens had never been seen.
func TestCacheTruncate(t *testing.T) {
	lm := loadLocal(t, tinyDir(t))
	ids := randomTokens(9, 10)
	want := mustForward(t, lm, lm.experts, model.Input{Cache: lm.NewCache(), Tokens: ids})

	c := lm.NewCache()
	mustForward(t, lm, lm.experts, model.Input{Cache: c, Tokens: append(ids[:6:6], 500, 600, 700)})
	perToken := int64(lm.Config.NumHiddenLayers) * 2 * int64(lm.Config.KVDim()) * 4
	if c.Bytes() != 9*perToken {
		t.Errorf("Bytes = %d, want %d", c.Bytes(), 9*perToken)
	}
	c.Truncate(6)
	c.Truncate(100) // beyond the length: nothing to drop
	if c.Len() != 6 || c.Bytes() != 6*perToken {
		t.Fatalf("after Truncate(6): Len %d, Bytes %d", c.Len(), c.Bytes())
	}
	got := mustForward(t, lm, lm.experts, model.Input{Cache: c, Tokens: ids[6:]})
	requireSameBits(t, "logits after truncation", want.Logits[0], got.Logits[0])
}

// TestSlidingWindow checks sliding-window attention with a window of 4
// keys: positions 0-3 see all their keys and match full attention bit for
// bit; from position 4 on they see fewer and differ. A window longer than
// the sequence is full attention, and decoding through the cache applies
// the same window.
func TestSlidingWindow(t *testing.T) {
	base := tinyDir(t)
	full := loadLocal(t, base)
	windowed := loadLocal(t, withConfig(t, base, func(c map[string]any) { c["sliding_window"] = 4 }))
	wide := loadLocal(t, withConfig(t, base, func(c map[string]any) { c["sliding_window"] = 64 }))
	if w := windowed.Config.SlidingWindow; w == nil || *w != 4 {
		t.Fatalf("sliding_window = %v, want 4", w)
	}
	ids := randomTokens(10, 12)
	V := full.Config.VocabSize
	all := func(lm local) []float32 {
		return mustForward(t, lm, lm.experts, model.Input{Cache: lm.NewCache(), Tokens: ids, AllLogits: true}).Logits[0]
	}
	f, w := all(full), all(windowed)
	for pos := range ids {
		same := bitDiff(f[pos*V:(pos+1)*V], w[pos*V:(pos+1)*V]) < 0
		if pos < 4 && !same {
			t.Errorf("position %d: windowed logits differ from full attention", pos)
		}
		if pos >= 4 && same {
			t.Errorf("position %d: windowed logits equal full attention", pos)
		}
	}
	requireSameBits(t, "window 64 vs full attention", f, all(wide))

	c := windowed.NewCache()
	mustForward(t, windowed, windowed.experts, model.Input{Cache: c, Tokens: ids[:5]})
	for pos := 5; pos < len(ids); pos++ {
		res := mustForward(t, windowed, windowed.experts, model.Input{Cache: c, Tokens: ids[pos : pos+1]})
		requireSameBits(t, fmt.Sprintf("decoding position %d", pos), w[pos*V:(pos+1)*V], res.Logits[0])
	}
}

// TestExpertSetSubset checks an ExpertSet holding some experts: it reports
// ErrExpertNotHeld for the others, before computing anything, and computes
// the ones it holds exactly as the full set does.
func TestExpertSetSubset(t *testing.T) {
	dir := tinyDir(t)
	lm := loadLocal(t, dir)
	cfg := lm.Config
	sub, err := model.LoadExperts(dir, cfg, func(l, e int) bool { return l == 0 && e%2 == 0 })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if sub.Len() != 4 || !sub.Has(0, 0) || !sub.Has(0, 6) || sub.Has(0, 1) || sub.Has(1, 0) {
		t.Errorf("subset: Len %d, Has(0,0) %v, Has(0,6) %v, Has(0,1) %v, Has(1,0) %v", sub.Len(), sub.Has(0, 0), sub.Has(0, 6), sub.Has(0, 1), sub.Has(1, 0))
	}
	if want := int64(4) * cfg.ExpertParams() * 4; sub.Bytes() != want {
		t.Errorf("Bytes = %d, want %d", sub.Bytes(), want)
	}

	H := cfg.HiddenSize
	batch := func(expert, rows int) model.ExpertBatch {
		in := make([]float32, rows*H)
		rng := rand.New(rand.NewPCG(uint64(expert), 1))
		for i := range in {
			in[i] = float32(rng.NormFloat64())
		}
		return model.ExpertBatch{Expert: expert, Rows: rows, In: in, Out: make([]float32, rows*H)}
	}
	ctx := t.Context()
	for _, tc := range []struct {
		name    string
		layer   int
		experts []int
	}{
		{"expert not held", 0, []int{1}},
		{"held then not held", 0, []int{2, 3}},
		{"layer not held", 1, []int{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var bs []model.ExpertBatch
			for _, e := range tc.experts {
				bs = append(bs, batch(e, 2))
			}
			if err := sub.Forward(ctx, tc.layer, bs); !errors.Is(err, model.ErrExpertNotHeld) {
				t.Errorf("Forward = %v, want ErrExpertNotHeld", err)
			}
			for _, b := range bs {
				for _, v := range b.Out {
					if v != 0 {
						t.Fatalf("expert %d computed before the error", b.Expert)
					}
				}
			}
		})
	}

	got, want := batch(4, 3), batch(4, 3)
	if err := sub.Forward(ctx, 0, []model.ExpertBatch{got}); err != nil {
		t.Fatal(err)
	}
	if err := lm.experts.Forward(ctx, 0, []model.ExpertBatch{want}); err != nil {
		t.Fatal(err)
	}
	requireSameBits(t, "held expert output", want.Out, got.Out)

	short := batch(0, 2)
	short.In = short.In[:H]
	if err := sub.Forward(ctx, 0, []model.ExpertBatch{short}); err == nil || errors.Is(err, model.ErrExpertNotHeld) {
		t.Errorf("Forward with a short input = %v, want a size error", err)
	}

	c := lm.NewCache()
	if _, err := lm.Forward(ctx, sub, []model.Input{{Cache: c, Tokens: randomTokens(11, 8)}}); !errors.Is(err, model.ErrExpertNotHeld) {
		t.Errorf("model Forward with the subset = %v, want ErrExpertNotHeld", err)
	}
	if c.Len() != 0 {
		t.Errorf("cache length %d after a failed step, want 0", c.Len())
	}
}

// TestForwardConcurrent runs sequences on one Model from several goroutines
// (a Model is safe for concurrent use) and compares them with runs one at a
// time.
func TestForwardConcurrent(t *testing.T) {
	lm := loadLocal(t, tinyDir(t))
	const n = 4
	want := make([][]float32, n)
	for i := range n {
		want[i] = mustForward(t, lm, lm.experts, model.Input{Cache: lm.NewCache(), Tokens: randomTokens(uint64(20+i), 6)}).Logits[0]
	}
	got := make([][]float32, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			res, err := lm.Forward(t.Context(), lm.experts, []model.Input{{Cache: lm.NewCache(), Tokens: randomTokens(uint64(20+i), 6)}})
			if err != nil {
				errs[i] = err
				return
			}
			got[i] = res.Logits[0]
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		requireSameBits(t, fmt.Sprintf("sequence %d", i), want[i], got[i])
	}
}

func TestGenerateStopsAtEOS(t *testing.T) {
	lm := loadLocal(t, tinyDir(t))
	script := func() func([]float32) int {
		ids := []int{5, lm.Config.EOSTokenID, 7, 8}
		return func([]float32) int {
			id := ids[0]
			ids = ids[1:]
			return id
		}
	}
	prompt := randomTokens(12, 3)
	got, err := lm.Generate(t.Context(), lm.experts, prompt, 10, false, script())
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]int{5, 2}, got); d != "" {
		t.Errorf("Generate stopping at EOS (-want +got):\n%s", d)
	}
	got, err = lm.Generate(t.Context(), lm.experts, prompt, 3, true, script())
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]int{5, 2, 7}, got); d != "" {
		t.Errorf("Generate ignoring EOS (-want +got):\n%s", d)
	}
}

// benchmarkDecode measures one decode step of a synthetic F32 checkpoint at
// position 16, after a 16-token prefill: the cache is cut back to 16 tokens
// before each step so every iteration does the same work. The bytes per
// operation are the weights one token reads (non-expert weights plus
// num_experts_per_tok experts per layer), so MB/s is the weight-streaming
// rate.
func benchmarkDecode(b *testing.B, preset string, shards int) {
	p, err := synth.PresetByName(preset)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	if err := synth.Write(dir, synth.Options{Preset: p, Seed: 1, DType: safetensors.F32, Shards: shards}); err != nil {
		b.Fatal(err)
	}
	m, err := model.Load(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	ex, err := model.LoadExperts(dir, m.Config, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer ex.Close()

	cfg := m.Config
	active := m.LMHead.Bytes() + int64(cfg.NumHiddenLayers*cfg.NumExpertsPerTok)*ex.Bytes()/int64(ex.Len())
	for _, ly := range m.Layers {
		active += ly.Q.Bytes() + ly.K.Bytes() + ly.V.Bytes() + ly.O.Bytes() + ly.Gate.Bytes()
	}
	b.SetBytes(active)

	ctx := b.Context()
	const prefill = 16
	cache := m.NewCache()
	res, err := m.Forward(ctx, ex, []model.Input{{Cache: cache, Tokens: randomTokens(1, prefill)}})
	if err != nil {
		b.Fatal(err)
	}
	next := []int{sample.Greedy(res.Logits[0])}
	for b.Loop() {
		cache.Truncate(prefill)
		if _, err := m.Forward(ctx, ex, []model.Input{{Cache: cache, Tokens: next}}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tok/s")
}

func BenchmarkForwardTinyDecode(b *testing.B) { benchmarkDecode(b, "tiny", 1) }

// BenchmarkForwardSmallDecode writes the small preset (about 3.2 GB in F32)
// to a temporary directory first.
func BenchmarkForwardSmallDecode(b *testing.B) {
	if testing.Short() {
		b.Skip("writes a 3.2 GB checkpoint")
	}
	benchmarkDecode(b, "small", 4)
}
