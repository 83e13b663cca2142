package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/sample"
	"github.com/moegrid/moegrid/model/synth"
	"github.com/moegrid/moegrid/router"
)

// tinyDir is the tiny synthetic checkpoint the tests share, written once by
// TestMain.
var tinyDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "moegrid-bench-test-")
	if err == nil {
		tinyDir = dir
		var tiny synth.Preset
		if tiny, err = synth.PresetByName("tiny"); err == nil {
			err = synth.Write(dir, synth.Options{Preset: tiny, Seed: 3, DType: safetensors.F32, Shards: 1})
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench tests: fixture:", err)
		os.Exit(1)
	}
	// The kernels' worker pool lives as long as the process.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/moegrid/moegrid/model/kernel.worker"), goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// openLocal opens Local over the tiny model until the test ends.
func openLocal(t *testing.T) *Local {
	t.Helper()
	l, err := OpenLocal(tinyDir, router.DefaultSchedulerConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return l
}

// startGenerator returns a generator over a new scheduler of l whose wave
// is wave requests, and runs it until the test ends.
func startGenerator(t *testing.T, l *Local, wave int) *generator {
	t.Helper()
	g := l.generator(wave)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- g.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	return g
}

// TestLocalMatchesModel: sequences served together by Local's scheduler get
// exactly the tokens the model generates greedily for each alone.
func TestLocalMatchesModel(t *testing.T) {
	m, err := model.Load(tinyDir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ex, err := model.LoadExperts(tinyDir, m.Config, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	prompts := [][]int{{1, 415, 5565}, {1, 22, 9000, 17, 4}, {1}, {1, 31999, 3, 3}}
	g := startGenerator(t, openLocal(t), len(prompts))
	const n = 7
	got := make([][]int, len(prompts))
	errs := make([]error, len(prompts))
	var wg sync.WaitGroup
	for i, p := range prompts {
		wg.Go(func() {
			errs[i] = g.Generate(testContext(t), p, n, func(ids []int) { got[i] = append(got[i], ids...) })
		})
	}
	wg.Wait()
	for i, p := range prompts {
		want, err := m.Generate(testContext(t), ex, p, n, true, sample.Greedy)
		if err != nil {
			t.Fatal(err)
		}
		if errs[i] != nil || !slices.Equal(got[i], want) {
			t.Errorf("prompt %v: got %v (err %v), want %v", p, got[i], errs[i], want)
		}
	}
}

// TestLocalRefusesBadRequests: a request the router would refuse fails
// alone with ErrInvalid, and the scheduler keeps serving.
func TestLocalRefusesBadRequests(t *testing.T) {
	g := startGenerator(t, openLocal(t), 1)
	for _, tc := range []struct {
		name      string
		prompt    []int
		maxTokens int
		want      string
	}{
		{"id past vocabulary", []int{1, 32000}, 4, "prompt[1]: token id 32000 outside"},
		{"negative id", []int{-1}, 4, "prompt[0]: token id -1 outside"},
		{"empty prompt", nil, 4, "0-token prompt"},
		{"no tokens asked", []int{1}, 0, "and 0 tokens"},
		{"past the context", []int{1, 2}, 32767, "do not fit the model's context of 32768"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := g.Generate(testContext(t), tc.prompt, tc.maxTokens, func([]int) { t.Error("got a token") })
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want ErrInvalid with %q", err, tc.want)
			}
		})
	}
	n := 0
	if err := g.Generate(testContext(t), []int{1, 5}, 3, func(ids []int) { n += len(ids) }); err != nil || n != 3 {
		t.Errorf("after the refusals: %d tokens, err %v; want 3, nil", n, err)
	}
}

// TestWave: the scheduler does not step until a wave of requests is queued,
// then serves them all.
func TestWave(t *testing.T) {
	g := startGenerator(t, openLocal(t), 2)
	first := make(chan int, 4)
	errc := make(chan error, 2)
	go func() { errc <- g.Generate(testContext(t), []int{1, 7}, 3, func(ids []int) { first <- len(ids) }) }()
	select {
	case <-first:
		t.Fatal("a token before the wave was queued")
	case err := <-errc:
		t.Fatalf("the first request ended alone: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	n := 0
	go func() { errc <- g.Generate(testContext(t), []int{1, 8}, 3, func(ids []int) { n += len(ids) }) }()
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if len(first) != 3 || n != 3 {
		t.Errorf("got %d and %d tokens, want 3 each", len(first), n)
	}
}

// TestRunInProcess runs moegrid bench's load on the tiny model in process:
// every request gets exactly its tokens, the latencies are consistent, and
// the prefill/decode split is there only when every request ran at once.
func TestRunInProcess(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    Config
		phases bool
	}{
		{"all at once", Config{Requests: 4, Concurrency: 4, PromptTokens: 8, MaxTokens: 6, Warmup: 1}, true},
		{"queued", Config{Requests: 6, Concurrency: 2, PromptTokens: 5, MaxTokens: 4}, false},
		{"one token each", Config{Requests: 1, Concurrency: 1, PromptTokens: 16, MaxTokens: 1}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Vocab, cfg.Seed, cfg.Timeout = 32000, 9, time.Minute
			res, err := RunInProcess(testContext(t), tinyDir, router.DefaultSchedulerConfig(), cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.Err() != nil || res.Requests != cfg.Requests || res.Tokens != cfg.Requests*cfg.MaxTokens {
				t.Fatalf("result %+v: want %d requests, none failed, %d tokens", res, cfg.Requests, cfg.Requests*cfg.MaxTokens)
			}
			if !(res.TTFT.P50 > 0 && res.TTFT.Max <= res.Latency.Max && res.TokensPerSecond > 0 && res.Seconds >= res.Latency.Max) {
				t.Errorf("inconsistent latencies: %+v", res)
			}
			if cfg.MaxTokens > 1 && res.InterToken.P50 <= 0 {
				t.Errorf("no time between tokens: %+v", res)
			}
			wantDecode := tc.phases && cfg.MaxTokens > 1
			if (res.PrefillTokensPerSecond > 0) != tc.phases || (res.DecodeTokensPerSecond > 0) != wantDecode {
				t.Errorf("prefill %v and decode %v tokens/s: want them set %v and %v", res.PrefillTokensPerSecond, res.DecodeTokensPerSecond, tc.phases, wantDecode)
			}
		})
	}
}

// TestRunInProcessFailures: requests the model cannot serve are counted,
// named and reported by Err, not returned as the run's error.
func TestRunInProcessFailures(t *testing.T) {
	cfg := Config{Requests: 3, Concurrency: 2, PromptTokens: 4, MaxTokens: 40000, Vocab: 32000, Seed: 1, Timeout: time.Minute}
	res, err := RunInProcess(testContext(t), tinyDir, router.DefaultSchedulerConfig(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Failed != 3 || res.Tokens != 0 || len(res.Errors) != 1 || !strings.Contains(res.FirstError, "do not fit the model's context") {
		t.Fatalf("result %+v: want 3 failures for the context", res)
	}
	if err := res.Err(); err == nil || !strings.Contains(err.Error(), "3 of 3 requests failed") {
		t.Errorf("Err() = %v", err)
	}
}

func TestOpenLocalErrors(t *testing.T) {
	bad := router.DefaultSchedulerConfig()
	bad.MaxRunning = 0
	if _, err := OpenLocal(tinyDir, bad, nil); err == nil || !strings.Contains(err.Error(), "scheduler limits") {
		t.Errorf("zero max running: err = %v", err)
	}
	if _, err := OpenLocal(t.TempDir(), router.DefaultSchedulerConfig(), nil); err == nil {
		t.Error("an empty directory opened")
	}
}
