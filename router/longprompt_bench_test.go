package router

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/moegrid/moegrid/model"
)

// BenchmarkLongPromptGaps measures issue 10's target for a long prompt:
// the time between tokens of N decoding streams while the prompt is
// prefilled beside them, against the same streams' before it arrived, as
// their clients see it. It reports p99 of both (gap-ms, base-ms), their
// ratio (p99-ratio; the target is at most 2), the ratio of the medians
// (p50-ratio), which a shared machine's noise moves less, and the prompt's
// time to its first token (prefill-s). MOEGRID_BENCH_MODEL names a checkpoint to use
// instead of the tiny preset, MOEGRID_LONG_PROMPT the prompt's length
// (default 30000); run it with -benchtime 1x.
func BenchmarkLongPromptGaps(b *testing.B) {
	m, experts := fx.model, model.Experts(fx.experts)
	if dir := os.Getenv("MOEGRID_BENCH_MODEL"); dir != "" {
		var err error
		if m, err = model.Load(dir); err != nil {
			b.Fatal(err)
		}
		defer m.Close()
		ex, err := model.LoadExperts(dir, m.Config, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer ex.Close()
		experts = ex
	}
	long := 30000
	if v := os.Getenv("MOEGRID_LONG_PROMPT"); v != "" {
		var err error
		if long, err = strconv.Atoi(v); err != nil || long < 1 {
			b.Fatalf("MOEGRID_LONG_PROMPT=%q: want a positive number of tokens", v)
		}
	}
	for _, streams := range []int{4, 16} {
		b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) {
			for b.Loop() {
				before, during, prefill := longPromptGaps(b, m, experts, streams, long)
				b.ReportMetric(percentile(before, 99)*1e3, "base-ms")
				b.ReportMetric(percentile(during, 99)*1e3, "gap-ms")
				b.ReportMetric(percentile(during, 99)/percentile(before, 99), "p99-ratio")
				b.ReportMetric(percentile(during, 50)/percentile(before, 50), "p50-ratio")
				b.ReportMetric(prefill.Seconds(), "prefill-s")
			}
		})
	}
}

// streamTokens is the length of each request of longPromptGaps's streams:
// they start over after it, so that their own contexts stay as short
// during the long prompt's prefill as before it, and the comparison is of
// like with like.
const streamTokens = 300

// longPromptGaps runs streams decoding, then a prompt of long tokens beside
// them, and returns the streams' gaps between tokens in seconds before the
// prompt arrived and while it was prefilled, and its time to first token.
// Each stream is a run of requests of streamTokens tokens; a request's
// first token, which waits for its own prompt, is not a gap.
func longPromptGaps(b *testing.B, m *model.Model, experts model.Experts, streams, long int) (before, during []float64, prefill time.Duration) {
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	s, _ := newScheduler(DefaultSchedulerConfig(), m, experts)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	type gap struct {
		at time.Time
		d  time.Duration
	}
	var mu sync.Mutex
	var gaps []gap
	var wg sync.WaitGroup
	for _, p := range prompts(streams) {
		wg.Go(func() {
			for ctx.Err() == nil {
				events, err := s.Submit(ctx, Request{Prompt: p, MaxTokens: streamTokens, IgnoreEOS: true, Sampler: greedy()})
				if err != nil {
					return
				}
				var last time.Time
				for ev := range events {
					if ev.Err != nil || ev.Finish != 0 {
						continue
					}
					now := time.Now()
					if !last.IsZero() {
						mu.Lock()
						gaps = append(gaps, gap{now, now.Sub(last)})
						mu.Unlock()
					}
					last = now
				}
			}
		})
	}
	defer wg.Wait()
	const warm, baseGaps = 20, 200
	for {
		mu.Lock()
		n := len(gaps)
		mu.Unlock()
		if n >= streams*(warm+baseGaps) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	prompt := make([]int, long)
	for i := range prompt {
		prompt[i] = 3 + (i*7919)%(m.Config.VocabSize-3)
	}
	start := time.Now()
	events, err := s.Submit(ctx, Request{Prompt: prompt, MaxTokens: 1, Sampler: greedy()})
	if err != nil {
		b.Fatal(err)
	}
	if ev := <-events; ev.Err != nil {
		b.Fatal(ev.Err)
	}
	end := time.Now()
	cancel()

	mu.Lock()
	defer mu.Unlock()
	for _, g := range gaps[streams*warm:] {
		switch {
		case g.at.Before(start):
			before = append(before, g.d.Seconds())
		case !g.at.After(end):
			during = append(during, g.d.Seconds())
		}
	}
	return before, during, end.Sub(start)
}

// percentile is the p-th percentile of xs, the nearest rank; 0 for none.
func percentile(xs []float64, p int) float64 {
	if len(xs) == 0 {
		return 0
	}
	xs = slices.Sorted(slices.Values(xs))
	return xs[max((len(xs)*p+99)/100-1, 0)]
}
