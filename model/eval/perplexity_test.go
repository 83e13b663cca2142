package eval_test

import (
	"context"
	"errors"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/eval"
	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/synth"
)

// text is long enough for several windows of the contexts below.
const text = "The quick brown fox jumps over the lazy dog. A stitch in time saves nine; " +
	"all that glitters is not gold, and the early bird catches the worm."

type tiny struct {
	m       *model.Model
	experts *model.ExpertSet
	tokens  []int
}

func loadTiny(t *testing.T) tiny {
	t.Helper()
	dir := t.TempDir()
	p, err := synth.PresetByName("tiny")
	if err != nil {
		t.Fatal(err)
	}
	if err := synth.Write(dir, synth.Options{Preset: p, Seed: 1, DType: safetensors.F32, Shards: 1}); err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	ex, err := model.LoadExperts(dir, m.Config, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ex.Close() })
	tok, err := model.LoadTokenizer(dir)
	if err != nil {
		t.Fatal(err)
	}
	return tiny{m: m, experts: ex, tokens: tok.Encode(text, true)}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// bruteForceNLL scores every token from the second on with the last-position
// logits of the prefix that ends before it, at most contextLen tokens long,
// and a log-softmax written out here.
func bruteForceNLL(t *testing.T, tm tiny, contextLen, stride int) float64 {
	t.Helper()
	ws, err := eval.Windows(len(tm.tokens), eval.Options{Context: contextLen, Stride: stride})
	if err != nil {
		t.Fatal(err)
	}
	var nll float64
	for _, w := range ws {
		for i := w.Score; i < w.End; i++ {
			res, err := tm.m.Forward(testContext(t), tm.experts, []model.Input{{Cache: tm.m.NewCache(), Tokens: tm.tokens[w.Begin:i]}})
			if err != nil {
				t.Fatal(err)
			}
			logits := res.Logits[0]
			var z float64
			for _, v := range logits {
				z += math.Exp(float64(v))
			}
			nll -= float64(logits[tm.tokens[i]]) - math.Log(z)
		}
	}
	return nll
}

func TestPerplexityMatchesBruteForce(t *testing.T) {
	tm := loadTiny(t)
	n := len(tm.tokens)
	if n < 30 {
		t.Fatalf("the text is %d tokens; the windows below need more", n)
	}
	for _, tc := range []struct {
		name            string
		context, stride int
		windows         int
	}{
		{"one window", n, 0, 1},
		{"side by side", 16, 0, (n - 1 + 14) / 15},
		{"overlapping", 16, 4, (n - 1 + 3) / 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls []int
			res, err := eval.Perplexity(testContext(t), eval.Local{Model: tm.m, Experts: tm.experts}, tm.tokens,
				eval.Options{Context: tc.context, Stride: tc.stride, Progress: func(done, total int) { calls = append(calls, done, total) }})
			if err != nil {
				t.Fatal(err)
			}
			if res.Tokens != n-1 || res.Windows != tc.windows {
				t.Errorf("scored %d tokens in %d windows, want %d in %d", res.Tokens, res.Windows, n-1, tc.windows)
			}
			if len(calls) != 2*res.Windows || calls[len(calls)-2] != n-1 || calls[len(calls)-1] != n-1 {
				t.Errorf("progress calls %v, want one per window ending at %d of %d", calls, n-1, n-1)
			}
			want := bruteForceNLL(t, tm, tc.context, tc.stride)
			// The run rounds each log-probability to float32 as the API
			// does; the brute force keeps float64.
			if d := math.Abs(res.NLL - want); d > 1e-5*float64(n) {
				t.Errorf("NLL %v, brute force %v (difference %g)", res.NLL, want, d)
			}
			if got, want := res.Perplexity(), math.Exp(want/float64(n-1)); math.Abs(got-want) > 1e-4*want {
				t.Errorf("perplexity %v, want %v", got, want)
			}
			if got := res.MeanLogLikelihood(); math.Abs(got+res.NLL/float64(n-1)) > 1e-12 {
				t.Errorf("mean log-likelihood %v, want %v", got, -res.NLL/float64(n-1))
			}
		})
	}
}

func TestWindows(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		o    eval.Options
		want []eval.Window
	}{
		{"two tokens", 2, eval.Options{Context: 8}, []eval.Window{{0, 1, 2}}},
		{"fits", 8, eval.Options{Context: 8}, []eval.Window{{0, 1, 8}}},
		{"one past", 9, eval.Options{Context: 8}, []eval.Window{{0, 1, 8}, {1, 8, 9}}},
		{"side by side", 15, eval.Options{Context: 8}, []eval.Window{{0, 1, 8}, {7, 8, 15}}},
		{"stride", 10, eval.Options{Context: 4, Stride: 2}, []eval.Window{{0, 1, 3}, {1, 3, 5}, {3, 5, 7}, {5, 7, 9}, {6, 9, 10}}},
		{"stride 1", 4, eval.Options{Context: 2, Stride: 1}, []eval.Window{{0, 1, 2}, {1, 2, 3}, {2, 3, 4}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := eval.Windows(tc.n, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("windows %v, want %v", got, tc.want)
			}
			scored := make([]int, tc.n)
			for _, w := range got {
				if w.End-w.Begin > tc.o.Context || w.Begin >= w.Score || w.Score >= w.End {
					t.Errorf("window %v: not a window of context %d", w, tc.o.Context)
				}
				for i := w.Score; i < w.End; i++ {
					scored[i]++
				}
			}
			for i, c := range scored[1:] {
				if c != 1 {
					t.Errorf("token %d scored %d times", i+1, c)
				}
			}
		})
	}
}

func TestWindowsErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		o    eval.Options
	}{
		{"no tokens", 0, eval.Options{Context: 8}},
		{"BOS only", 1, eval.Options{Context: 8}},
		{"context 1", 10, eval.Options{Context: 1}},
		{"stride = context", 10, eval.Options{Context: 8, Stride: 8}},
		{"negative stride", 10, eval.Options{Context: 8, Stride: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := eval.Windows(tc.n, tc.o); !errors.Is(err, eval.ErrInput) {
				t.Errorf("error %v, want eval.ErrInput", err)
			}
		})
	}
}

func TestPerplexityScorerError(t *testing.T) {
	tm := loadTiny(t)
	bad := slices.Clone(tm.tokens)
	bad[3] = tm.m.Config.VocabSize
	_, err := eval.Perplexity(testContext(t), eval.Local{Model: tm.m, Experts: tm.experts}, bad, eval.Options{Context: 8})
	if !errors.Is(err, model.ErrInput) {
		t.Errorf("error %v, want model.ErrInput", err)
	}
}

func TestMeasureExpertLoad(t *testing.T) {
	tm := loadTiny(t)
	cfg := tm.m.Config
	whole, err := eval.MeasureExpertLoad(testContext(t), tm.m, tm.experts, tm.tokens, len(tm.tokens), nil)
	if err != nil {
		t.Fatal(err)
	}
	// The counts are those of the routes of one forward pass over the text.
	res, err := tm.m.Forward(testContext(t), tm.experts, []model.Input{{Cache: tm.m.NewCache(), Tokens: tm.tokens}})
	if err != nil {
		t.Fatal(err)
	}
	for l := range cfg.NumHiddenLayers {
		want := make([]int, cfg.NumLocalExperts)
		for _, rt := range res.Routes[l] {
			for _, e := range rt.Experts {
				want[e]++
			}
		}
		if !slices.Equal(whole.Counts[l], want) {
			t.Errorf("layer %d counts %v, want %v", l, whole.Counts[l], want)
		}
		var sum float64
		for _, f := range whole.Fractions(l) {
			sum += f
		}
		if math.Abs(sum-1) > 1e-12 {
			t.Errorf("layer %d fractions sum to %v", l, sum)
		}
		if m := whole.MaxOverMean(l); m < 1 || m > float64(cfg.NumLocalExperts) {
			t.Errorf("layer %d max/mean %v outside [1, %d]", l, m, cfg.NumLocalExperts)
		}
		if h := whole.Entropy(l); h <= 0 || h > 1 {
			t.Errorf("layer %d entropy %v outside (0, 1]", l, h)
		}
	}
	windowed, err := eval.MeasureExpertLoad(testContext(t), tm.m, tm.experts, tm.tokens, 7, nil)
	if err != nil {
		t.Fatal(err)
	}
	for l, counts := range windowed.Counts {
		var n int
		for _, c := range counts {
			n += c
		}
		if n != len(tm.tokens)*cfg.NumExpertsPerTok || windowed.Tokens != len(tm.tokens) {
			t.Errorf("layer %d: %d slots for %d tokens, want %d", l, n, windowed.Tokens, len(tm.tokens)*cfg.NumExpertsPerTok)
		}
	}
}

func TestExpertLoadImbalance(t *testing.T) {
	for _, tc := range []struct {
		name             string
		counts           []int
		maxMean, entropy float64
	}{
		{"uniform", []int{5, 5, 5, 5}, 1, 1},
		{"one expert", []int{0, 12, 0, 0}, 4, 0},
		{"two of four", []int{3, 0, 3, 0}, 2, 0.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := eval.ExpertLoad{Counts: [][]int{tc.counts}}
			if got := l.MaxOverMean(0); math.Abs(got-tc.maxMean) > 1e-12 {
				t.Errorf("max/mean %v, want %v", got, tc.maxMean)
			}
			if got := l.Entropy(0); math.Abs(got-tc.entropy) > 1e-12 {
				t.Errorf("entropy %v, want %v", got, tc.entropy)
			}
		})
	}
}
