package router

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/model"
)

// After a known workload the registry holds one latency observation per
// request (per generated token after the first for the time between
// tokens), the token counters' sums, and per-layer expert rows that add up
// to top-k rows for every token computed.
func TestSchedulerMetrics(t *testing.T) {
	ctx := testContext(t)
	reg := prometheus.NewRegistry()
	met := newMetrics(reg)
	cfg := SchedulerConfig{MaxBatchTokens: 16, PrefillChunk: 4, MaxRunning: 3, MaxWaiting: 8, KVCacheBytes: 1 << 30}
	var mu sync.Mutex
	routed := map[[2]int]int{} // {layer, expert}: rows, as the model reports them
	s := NewScheduler(cfg, fx.model, fx.experts, slog.New(slog.DiscardHandler), met, func(routes [][]model.Route) {
		mu.Lock()
		defer mu.Unlock()
		for l, layer := range routes {
			for _, rt := range layer {
				for _, e := range rt.Experts {
					routed[[2]int{l, e}]++
				}
			}
		}
	})
	runScheduler(t, s)

	ps := prompts(5)
	var promptTokens, generated, gaps int
	var wg sync.WaitGroup
	for i, p := range ps {
		maxTokens := 2 + i
		promptTokens += len(p)
		generated += maxTokens
		gaps += maxTokens - 1
		wg.Go(func() {
			events, err := s.Submit(ctx, Request{Prompt: p, MaxTokens: maxTokens, IgnoreEOS: true, Sampler: greedy()})
			if err != nil {
				t.Errorf("Submit %d: %v", i, err)
				return
			}
			if toks, end := collect(t, ctx, events); len(toks) != maxTokens || end.Finish != FinishLength {
				t.Errorf("request %d: %d tokens, end %+v", i, len(toks), end)
			}
		})
	}
	wg.Wait()
	idle(t, met)

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, f := range families {
		byName[f.GetName()] = f
	}
	n := len(ps)
	for name, want := range map[string]int{
		"moegrid_router_time_to_first_token_seconds":   n,
		"moegrid_router_time_per_output_token_seconds": gaps,
		"moegrid_router_request_duration_seconds":      n,
		"moegrid_router_queue_time_seconds":            n,
		"moegrid_router_prefill_time_seconds":          n,
	} {
		f := byName[name]
		if f == nil || f.GetType() != dto.MetricType_HISTOGRAM {
			t.Errorf("%s: no histogram", name)
			continue
		}
		if got := f.GetMetric()[0].GetHistogram().GetSampleCount(); got != uint64(want) {
			t.Errorf("%s count = %d, want %d", name, got, want)
		}
	}
	value := func(name string) float64 {
		f := byName[name]
		if f == nil {
			t.Errorf("%s: missing", name)
			return -1
		}
		m := f.GetMetric()[0]
		return m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	for name, want := range map[string]float64{
		"moegrid_router_prompt_tokens_total":    float64(promptTokens),
		"moegrid_router_generated_tokens_total": float64(generated),
		"moegrid_router_running_sequences":      0,
		"moegrid_router_waiting_requests":       0,
		"moegrid_router_kv_cache_used_bytes":    0,
		"moegrid_router_kv_cache_budget_bytes":  float64(cfg.KVCacheBytes),
	} {
		if got := value(name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}

	// Every token computed (the prompts and every generated token but the
	// last, which is never fed back) is routed to top-k experts per layer.
	c := fx.model.Config
	rows := map[[2]int]float64{}
	perLayer := make([]float64, c.NumHiddenLayers)
	for _, m := range byName["moegrid_router_expert_layer_rows_total"].GetMetric() {
		var key [2]int
		for _, lp := range m.GetLabel() {
			v, err := strconv.Atoi(lp.GetValue())
			if err != nil {
				t.Fatalf("label %s=%q", lp.GetName(), lp.GetValue())
			}
			switch lp.GetName() {
			case "layer":
				key[0] = v
			case "expert":
				key[1] = v
			}
		}
		rows[key] = m.GetCounter().GetValue()
		perLayer[key[0]] += m.GetCounter().GetValue()
	}
	wantPerLayer := float64((promptTokens + generated - n) * c.NumExpertsPerTok)
	for l, got := range perLayer {
		if got != wantPerLayer {
			t.Errorf("layer %d: %v rows routed, want %v", l, got, wantPerLayer)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for key, want := range routed {
		if rows[key] != float64(want) {
			t.Errorf("layer %d expert %d: %v rows, the model routed %d", key[0], key[1], rows[key], want)
		}
	}
}

// A client gone mid-stream is its own cancel or deadline, not an error of
// the server's, even when the write to it fails first.
func TestCompleteClientGone(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	c, err := tr.r.validate(completionParams{ids: prompts(1)[0], maxTokens: 100, ignoreEOS: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		timeout time.Duration // 0: the emit cancels
		want    codes.Code
	}{
		{"cancelled", 0, codes.Canceled},
		{"deadline", 50 * time.Millisecond, codes.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(testContext(t))
			defer cancel()
			if tc.timeout > 0 {
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			_, _, err := tr.r.complete(ctx, c, func(chunk) error {
				if tc.timeout == 0 {
					cancel()
				}
				<-ctx.Done()
				return errors.New("write: connection reset by peer")
			})
			if got := status.Code(toStatus(err)); got != tc.want {
				t.Errorf("complete: %v (%v), want %v", err, got, tc.want)
			}
		})
	}
	idle(t, tr.r.metrics)
}
