package router

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/model"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

func TestKVBytesPerToken(t *testing.T) {
	c := fx.model.Config
	// layers × (key + value) × kv_dim × float32
	want := int64(c.NumHiddenLayers * 2 * c.KVDim() * 4)
	if got := kvBytesPerToken(&c); got != want {
		t.Errorf("kvBytesPerToken = %d, want %d", got, want)
	}
	// A full cache holds what the reservation promised.
	cache := fx.model.NewCache()
	p := prompts(1)[0]
	if _, err := fx.model.Forward(testContext(t), fx.experts, []model.Input{{Cache: cache, Tokens: p}}); err != nil {
		t.Fatal(err)
	}
	if got := cache.Bytes(); got != int64(len(p))*want {
		t.Errorf("cache of %d tokens holds %d bytes, want %d", len(p), got, int64(len(p))*want)
	}
}

// A request whose reservation would overflow the budget waits, behind it
// those after it, until the running one is cancelled; its bytes return at
// once and the waiting one runs. The reservations never pass the budget.
func TestSchedulerKVBudget(t *testing.T) {
	ctx := testContext(t)
	ps := prompts(3)
	const longTokens, waitTokens = 20000, 6
	per := kvBytesPerToken(&fx.model.Config)
	longReserve := int64(len(ps[0])+longTokens) * per
	waitReserve := int64(len(ps[1])+waitTokens) * per
	// Room for the long request and a little, not for the second beside it.
	budget := longReserve + waitReserve - per
	cfg := DefaultSchedulerConfig()
	cfg.KVCacheBytes, cfg.MaxWaiting = budget, 2
	s, met := newScheduler(cfg, fx.model, fx.experts)
	var mu sync.Mutex
	var peak int64
	s.onStep = func(w stepWork) {
		mu.Lock()
		defer mu.Unlock()
		peak = max(peak, w.reserved)
	}
	runScheduler(t, s)

	if got := gaugeValue(met.kvBudget); got != float64(budget) {
		t.Errorf("kv_cache_budget_bytes = %v, want %d", got, budget)
	}
	longCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	long, err := s.Submit(longCtx, Request{Prompt: ps[0], MaxTokens: longTokens, IgnoreEOS: true, Sampler: greedy()})
	if err != nil {
		t.Fatal(err)
	}
	nextToken(t, ctx, long)
	want := reference(t, fx.model, ps[1], waitTokens, true)
	waiter, err := s.Submit(ctx, Request{Prompt: ps[1], MaxTokens: waitTokens, IgnoreEOS: true, Sampler: greedy()})
	if err != nil {
		t.Fatal(err)
	}
	// A small request would fit beside the long one, but it is behind the
	// waiting one.
	small, err := s.Submit(ctx, Request{Prompt: ps[2], MaxTokens: 1, Sampler: greedy()})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "both waiting", func() error {
		if w := gaugeValue(met.waiting); w != 2 {
			return fmt.Errorf("waiting %v", w)
		}
		return nil
	})
	if _, err := s.Submit(ctx, Request{Prompt: ps[2], MaxTokens: 1, Sampler: greedy()}); !errors.Is(err, ErrQueueFull) {
		t.Errorf("Submit with the wait queue full: %v, want ErrQueueFull", err)
	}
	for range 5 {
		nextToken(t, ctx, long)
	}
	select {
	case ev := <-waiter:
		t.Fatalf("the request past the budget got %+v while the long one runs", ev)
	default:
	}
	if got := gaugeValue(met.kvUsed); got != float64(longReserve) {
		t.Errorf("kv_cache_used_bytes = %v, want the long request's %d", got, longReserve)
	}

	cancel()
	if _, end := collect(t, ctx, long); !errors.Is(end.Err, context.Canceled) {
		t.Errorf("long request: %+v", end)
	}
	got, end := collect(t, ctx, waiter)
	if diff := cmp.Diff(want, got); diff != "" || end.Finish != FinishLength {
		t.Errorf("after the cancel: end %+v, tokens (-want +got):\n%s", end, diff)
	}
	if toks, end := collect(t, ctx, small); len(toks) != 1 || end.Finish != FinishLength {
		t.Errorf("small request: %d tokens, end %+v", len(toks), end)
	}
	idle(t, met)
	if got := gaugeValue(met.kvUsed); got != 0 {
		t.Errorf("kv_cache_used_bytes = %v after every request ended, want 0", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if peak > budget {
		t.Errorf("reserved %d bytes in a step, over the budget %d", peak, budget)
	}
	if peak < longReserve {
		t.Errorf("peak reservation %d, want at least the long request's %d", peak, longReserve)
	}

	if _, err := s.Submit(ctx, Request{Prompt: ps[0], MaxTokens: int(budget/per) + 1, Sampler: greedy()}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Submit of a request past the whole budget: %v, want ErrInvalid", err)
	}
}

// Through the API: a request that could never fit, or a prompt past the
// limit, is INVALID_ARGUMENT naming its field.
func TestGenerateTooBig(t *testing.T) {
	sched := DefaultSchedulerConfig()
	per := kvBytesPerToken(&fx.model.Config)
	sched.KVCacheBytes = 100 * per
	sched.MaxPromptTokens = 8
	tr := newTestRouter(t, routerOptions{sched: sched})
	for _, tc := range []struct {
		name  string
		req   *moegridv1.GenerateRequest
		field string
	}{
		{"prompt past max prompt tokens", &moegridv1.GenerateRequest{Prompt: idsPrompt(make([]int, 9))}, "prompt"},
		{"past the KV budget", &moegridv1.GenerateRequest{Prompt: idsPrompt(make([]int, 8)), MaxTokens: 93}, "max_tokens"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := generate(testContext(t), tr.client, tc.req)
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument || !strings.HasPrefix(strings.TrimPrefix(st.Message(), ErrInvalid.Error()+": "), tc.field) {
				t.Errorf("got %v, want InvalidArgument naming %q", err, tc.field)
			}
		})
	}
	// Exactly the budget fits.
	g, err := generate(testContext(t), tr.client, &moegridv1.GenerateRequest{Prompt: idsPrompt(make([]int, 8)), MaxTokens: 92, IgnoreEos: true})
	if err != nil || len(g.tokens) != 92 {
		t.Errorf("a request of exactly the budget: %d tokens, %v", len(g.tokens), err)
	}
}

func TestSubmitInvalid(t *testing.T) {
	ctx := testContext(t)
	cfg := DefaultSchedulerConfig()
	cfg.MaxPromptTokens = 8
	cfg.KVCacheBytes = 64 * kvBytesPerToken(&fx.model.Config)
	s, _ := newScheduler(cfg, fx.model, fx.experts)
	runScheduler(t, s)
	p := prompts(1)[0]
	for _, tc := range []struct {
		name  string
		req   Request
		field string
	}{
		{"no prompt", Request{MaxTokens: 1}, "prompt"},
		{"no max tokens", Request{Prompt: p}, "max_tokens"},
		{"negative logprobs", Request{Prompt: p, MaxTokens: 1, Logprobs: -1}, "logprobs"},
		{"logprobs past the cap", Request{Prompt: p, MaxTokens: 1, Logprobs: MaxLogprobs + 1}, "logprobs"},
		{"prompt past the limit", Request{Prompt: make([]int, 9), MaxTokens: 1}, "prompt"},
		{"past the KV budget", Request{Prompt: p, MaxTokens: 64}, "max_tokens"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.Sampler = greedy()
			_, err := s.Submit(ctx, tc.req)
			if !errors.Is(err, ErrInvalid) || !strings.HasPrefix(strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": "), tc.field) {
				t.Errorf("Submit: %v, want ErrInvalid naming %q", err, tc.field)
			}
		})
	}
}
