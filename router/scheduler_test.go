package router

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/moegrid/moegrid/model"
)

// prompts are the test prompts with BOS, of assorted lengths.
func prompts(n int) [][]int {
	texts := []string{
		"Hello world", "The quick brown fox", "a", "1 2 3 4", "Once upon a time",
		"Mixture of experts", "continuous batching changes nothing", "ok",
		"Quand le ciel bas et lourd pèse comme un couvercle",
		"func main() { fmt.Println(42) }", "z", "What is the capital of France?",
		"the the the the the the the the", "Ünïcödé ✓ 日本語", "[INST] hi [/INST]", "END",
	}
	out := make([][]int, n)
	for i := range out {
		out[i] = fx.tok.Encode(texts[i%len(texts)], true)
	}
	return out
}

// Sixteen concurrent greedy requests give, bit for bit, the tokens each
// gives alone: with few running places, small steps and small chunks,
// requests wait, join mid-flight and prefill over several steps beside
// decoding ones, and none of that changes a token.
func TestSchedulerBatchingMatchesAlone(t *testing.T) {
	const n = 16
	ctx := testContext(t)
	ps := prompts(n)
	want := make([][]int, n)
	for i, p := range ps {
		want[i] = reference(t, fx.model, p, 2+i%4, false)
	}
	s, met := newScheduler(SchedulerConfig{MaxBatchTokens: 12, PrefillChunk: 5, MaxRunning: 8, MaxWaiting: n}, fx.model, fx.experts)
	runScheduler(t, s)
	got := make([][]int, n)
	ends := make([]Event, n)
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Go(func() {
			events, err := s.Submit(ctx, Request{Prompt: p, MaxTokens: len(want[i]), Sampler: greedy()})
			if err != nil {
				t.Errorf("Submit %d: %v", i, err)
				return
			}
			got[i], ends[i] = collect(t, ctx, events)
		})
	}
	wg.Wait()
	for i := range ps {
		if diff := cmp.Diff(want[i], got[i]); diff != "" {
			t.Errorf("request %d: tokens differ from model.Generate alone (-want +got):\n%s", i, diff)
		}
		if ends[i].Finish != FinishLength {
			t.Errorf("request %d ended with %+v, want FinishLength", i, ends[i])
		}
	}
	idle(t, met)
}

func TestSchedulerChunkedPrefill(t *testing.T) {
	ctx := testContext(t)
	prompt := fx.tok.Encode(strings.Repeat("A long prompt is prefilled in chunks. ", 3), true)
	const chunk, maxTokens = 4, 5
	if len(prompt) <= 2*chunk {
		t.Fatalf("prompt of %d tokens is too short", len(prompt))
	}
	want := reference(t, fx.model, prompt, maxTokens, false)

	var mu sync.Mutex
	var stepRows []int
	// No logger and no metrics: NewScheduler must cope.
	s := NewScheduler(SchedulerConfig{MaxBatchTokens: 8, PrefillChunk: chunk, MaxRunning: 4, MaxWaiting: 4}, fx.model, fx.experts, nil, nil,
		func(routes [][]model.Route) {
			mu.Lock()
			defer mu.Unlock()
			stepRows = append(stepRows, len(routes[0]))
		})
	runScheduler(t, s)
	events, err := s.Submit(ctx, Request{Prompt: prompt, MaxTokens: maxTokens, Sampler: greedy()})
	if err != nil {
		t.Fatal(err)
	}
	got, end := collect(t, ctx, events)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("chunked prefill changed the tokens (-want +got):\n%s", diff)
	}
	if end.Finish != FinishLength {
		t.Errorf("end %+v, want FinishLength", end)
	}

	mu.Lock()
	defer mu.Unlock()
	var wantRows []int
	for rest := len(prompt); rest > 0; rest -= chunk {
		wantRows = append(wantRows, min(rest, chunk))
	}
	for range maxTokens - 1 {
		wantRows = append(wantRows, 1)
	}
	if diff := cmp.Diff(wantRows, stepRows); diff != "" {
		t.Errorf("rows per step (-want +got):\n%s", diff)
	}
}

func TestSchedulerCancel(t *testing.T) {
	ctx := testContext(t)
	s, met := newScheduler(DefaultSchedulerConfig(), fx.model, fx.experts)
	runScheduler(t, s)

	t.Run("running", func(t *testing.T) {
		reqCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		events, err := s.Submit(reqCtx, Request{Prompt: prompts(1)[0], MaxTokens: 20000, IgnoreEOS: true, Sampler: greedy()})
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			nextToken(t, ctx, events)
		}
		cancel()
		toks, end := collect(t, ctx, events)
		if !errors.Is(end.Err, context.Canceled) {
			t.Fatalf("ended with %+v after %d more tokens, want context.Canceled", end, len(toks))
		}
		idle(t, met)
	})

	t.Run("queued", func(t *testing.T) {
		reqCtx, cancel := context.WithCancel(ctx)
		cancel()
		events, err := s.Submit(reqCtx, Request{Prompt: prompts(1)[0], MaxTokens: 10, Sampler: greedy()})
		if err != nil {
			t.Fatal(err)
		}
		toks, end := collect(t, ctx, events)
		if !errors.Is(end.Err, context.Canceled) || len(toks) != 0 {
			t.Fatalf("got %d tokens and %+v, want no token and context.Canceled", len(toks), end)
		}
		idle(t, met)
	})

	t.Run("next request", func(t *testing.T) {
		p := prompts(2)[1]
		want := reference(t, fx.model, p, 8, false)
		events, err := s.Submit(ctx, Request{Prompt: p, MaxTokens: 8, Sampler: greedy()})
		if err != nil {
			t.Fatal(err)
		}
		got, end := collect(t, ctx, events)
		if diff := cmp.Diff(want, got); diff != "" || end.Finish != FinishLength {
			t.Errorf("after a cancel: end %+v, tokens (-want +got):\n%s", end, diff)
		}
		idle(t, met)
	})
}

func TestSchedulerQueueFull(t *testing.T) {
	t.Run("not running", func(t *testing.T) {
		ctx := testContext(t)
		s, _ := newScheduler(SchedulerConfig{MaxBatchTokens: 64, PrefillChunk: 64, MaxRunning: 4, MaxWaiting: 2}, fx.model, fx.experts)
		var queued []<-chan Event
		for i := range 2 {
			events, err := s.Submit(ctx, Request{Prompt: prompts(1)[0], MaxTokens: 2, Sampler: greedy()})
			if err != nil {
				t.Fatalf("Submit %d: %v", i, err)
			}
			queued = append(queued, events)
		}
		if _, err := s.Submit(ctx, Request{Prompt: prompts(1)[0], MaxTokens: 2, Sampler: greedy()}); !errors.Is(err, ErrQueueFull) {
			t.Fatalf("third Submit: %v, want ErrQueueFull", err)
		}
		runScheduler(t, s)
		for i, events := range queued {
			if toks, end := collect(t, ctx, events); len(toks) != 2 || end.Finish != FinishLength {
				t.Errorf("queued request %d: %d tokens, end %+v", i, len(toks), end)
			}
		}
	})

	// While Run takes requests off the queue into its waiting list, they
	// still count against MaxWaiting.
	t.Run("running", func(t *testing.T) {
		ctx := testContext(t)
		const maxWaiting = 2
		s, met := newScheduler(SchedulerConfig{MaxBatchTokens: 64, PrefillChunk: 64, MaxRunning: 1, MaxWaiting: maxWaiting}, fx.model, fx.experts)
		runScheduler(t, s)
		longCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		long, err := s.Submit(longCtx, Request{Prompt: prompts(1)[0], MaxTokens: 20000, IgnoreEOS: true, Sampler: greedy()})
		if err != nil {
			t.Fatal(err)
		}
		nextToken(t, ctx, long) // running
		var queued []<-chan Event
		for i := range maxWaiting {
			events, err := s.Submit(ctx, Request{Prompt: prompts(3)[2], MaxTokens: 3, Sampler: greedy()})
			if err != nil {
				t.Fatalf("Submit %d: %v", i, err)
			}
			queued = append(queued, events)
		}
		eventually(t, "requests taken into the waiting list", func() error {
			if w := gaugeValue(met.waiting); w != maxWaiting {
				return fmt.Errorf("waiting %v", w)
			}
			return nil
		})
		if _, err := s.Submit(ctx, Request{Prompt: prompts(1)[0], MaxTokens: 2, Sampler: greedy()}); !errors.Is(err, ErrQueueFull) {
			t.Fatalf("Submit past MaxWaiting: %v, want ErrQueueFull", err)
		}
		cancel()
		if _, end := collect(t, ctx, long); !errors.Is(end.Err, context.Canceled) {
			t.Errorf("long request: %+v", end)
		}
		for i, events := range queued {
			if toks, end := collect(t, ctx, events); len(toks) != 3 || end.Finish != FinishLength {
				t.Errorf("queued request %d: %d tokens, end %+v", i, len(toks), end)
			}
		}
		idle(t, met)
	})
}

func TestSchedulerStopped(t *testing.T) {
	ctx := testContext(t)
	s, _ := newScheduler(DefaultSchedulerConfig(), fx.model, fx.experts)
	stop := runScheduler(t, s)
	events, err := s.Submit(ctx, Request{Prompt: prompts(1)[0], MaxTokens: 20000, IgnoreEOS: true, Sampler: greedy()})
	if err != nil {
		t.Fatal(err)
	}
	nextToken(t, ctx, events)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, end := collect(t, ctx, events); !errors.Is(end.Err, ErrStopped) {
		t.Errorf("request in flight at stop ended with %+v, want ErrStopped", end)
	}
	if _, err := s.Submit(ctx, Request{Prompt: prompts(1)[0], MaxTokens: 2, Sampler: greedy()}); !errors.Is(err, ErrStopped) {
		t.Errorf("Submit after Run: %v, want ErrStopped", err)
	}
}

func TestSchedulerFinish(t *testing.T) {
	p := prompts(1)[0]
	ref := reference(t, fx.model, p, 8, true)
	eos := ref[2]
	if eos == ref[0] || eos == ref[1] {
		t.Fatalf("greedy tokens %v repeat early; pick another prompt", ref)
	}
	// A copy of the model whose end-of-sequence token is the third greedy
	// token: random weights never sample the real one.
	withEOS := modelWith(func(c *model.Config) { c.EOSTokenID = eos })
	// A context that ends three positions after the prompt.
	short := modelWith(func(c *model.Config) { c.MaxPositionEmbeddings = len(p) + 3 })

	for _, tc := range []struct {
		name       string
		model      *model.Model
		req        Request
		want       []int
		wantFinish FinishReason
	}{
		{"max tokens", fx.model, Request{MaxTokens: 5}, ref[:5], FinishLength},
		{"eos", withEOS, Request{MaxTokens: 8}, ref[:3], FinishStop},
		{"ignore eos", withEOS, Request{MaxTokens: 8, IgnoreEOS: true}, ref, FinishLength},
		// Prompt and completion fill the context exactly; the last token is
		// returned, never fed back.
		{"context", short, Request{MaxTokens: 100}, ref[:3], FinishLength},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			s, met := newScheduler(DefaultSchedulerConfig(), tc.model, fx.experts)
			runScheduler(t, s)
			tc.req.Prompt, tc.req.Sampler = p, greedy()
			events, err := s.Submit(ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			got, end := collect(t, ctx, events)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("tokens (-want +got):\n%s", diff)
			}
			if end.Finish != tc.wantFinish || end.Err != nil {
				t.Errorf("end %+v, want finish %v", end, tc.wantFinish)
			}
			idle(t, met)
		})
	}
}

func TestSchedulerExpertFailure(t *testing.T) {
	ctx := testContext(t)
	experts := &faultyExperts{inner: fx.experts, err: fmt.Errorf("%w: experts [3] of layer 0 have no live, loaded holder", ErrNoLiveReplica)}
	s, met := newScheduler(DefaultSchedulerConfig(), fx.model, experts)
	runScheduler(t, s)

	t.Run("failing", func(t *testing.T) {
		experts.failing.Store(true)
		var wg sync.WaitGroup
		for i, p := range prompts(4) {
			wg.Go(func() {
				events, err := s.Submit(ctx, Request{Prompt: p, MaxTokens: 4, Sampler: greedy()})
				if err != nil {
					t.Errorf("Submit %d: %v", i, err)
					return
				}
				if toks, end := collect(t, ctx, events); !errors.Is(end.Err, ErrNoLiveReplica) || len(toks) != 0 {
					t.Errorf("request %d: %d tokens, end %+v; want ErrNoLiveReplica", i, len(toks), end)
				}
			})
		}
		wg.Wait()
		idle(t, met)
	})

	t.Run("mid-sequence", func(t *testing.T) {
		experts.failing.Store(false)
		events, err := s.Submit(ctx, Request{Prompt: prompts(1)[0], MaxTokens: 20000, IgnoreEOS: true, Sampler: greedy()})
		if err != nil {
			t.Fatal(err)
		}
		nextToken(t, ctx, events)
		experts.failing.Store(true)
		if _, end := collect(t, ctx, events); !errors.Is(end.Err, ErrNoLiveReplica) {
			t.Errorf("end %+v, want ErrNoLiveReplica", end)
		}
		idle(t, met)
	})

	t.Run("recovered", func(t *testing.T) {
		experts.failing.Store(false)
		p := prompts(2)[1]
		want := reference(t, fx.model, p, 6, false)
		events, err := s.Submit(ctx, Request{Prompt: p, MaxTokens: 6, Sampler: greedy()})
		if err != nil {
			t.Fatal(err)
		}
		got, end := collect(t, ctx, events)
		if diff := cmp.Diff(want, got); diff != "" || end.Finish != FinishLength {
			t.Errorf("after the failure: end %+v, tokens (-want +got):\n%s", end, diff)
		}
		idle(t, met)
	})
}
