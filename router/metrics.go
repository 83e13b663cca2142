package router

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/moegrid/moegrid/model"
)

// Latency buckets, in seconds. Time to first token, queue time and prefill
// time span 1 ms to 65 s, doubling; the time between tokens 0.5 ms to 8 s;
// a request's whole duration 10 ms to 5.5 min.
var (
	firstTokenBuckets = prometheus.ExponentialBuckets(0.001, 2, 17)
	perTokenBuckets   = prometheus.ExponentialBuckets(0.0005, 2, 15)
	durationBuckets   = prometheus.ExponentialBuckets(0.01, 2, 16)
)

// metrics are the router's Prometheus metrics, namespace moegrid, subsystem
// router.
type metrics struct {
	requests     *prometheus.CounterVec
	tokens       prometheus.Counter
	promptTokens prometheus.Counter
	running      prometheus.Gauge
	waiting      prometheus.Gauge
	kvUsed       prometheus.Gauge
	kvBudget     prometheus.Gauge
	stepTokens   prometheus.Histogram
	ttft         prometheus.Histogram
	tpot         prometheus.Histogram
	duration     prometheus.Histogram
	queueTime    prometheus.Histogram
	prefillTime  prometheus.Histogram
	expertRows   *prometheus.CounterVec
	// expertLayerRows is labelled {layer, expert}.
	expertLayerRows *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	histogram := func(name, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "moegrid", Subsystem: "router", Name: name, Help: help, Buckets: buckets,
		})
	}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "requests_total",
			Help: "Generation requests by API and gRPC status code; a client's cancel is Canceled and a passed deadline DeadlineExceeded.",
		}, []string{"api", "code"}),
		tokens: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "generated_tokens_total",
			Help: "Tokens sampled.",
		}),
		promptTokens: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "prompt_tokens_total",
			Help: "Prompt tokens prefilled.",
		}),
		running: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "running_sequences",
			Help: "Sequences in the running batch.",
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "waiting_requests",
			Help: "Requests waiting for a place in the batch.",
		}),
		kvUsed: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "kv_cache_used_bytes",
			Help: "KV cache bytes reserved by the running sequences (prompt and max_tokens each).",
		}),
		kvBudget: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "kv_cache_budget_bytes",
			Help: "KV cache bytes the running sequences may reserve together.",
		}),
		stepTokens: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "step_tokens",
			Help:    "Tokens computed per scheduler step.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12),
		}),
		ttft:        histogram("time_to_first_token_seconds", "From a request's arrival at the scheduler to its first token.", firstTokenBuckets),
		tpot:        histogram("time_per_output_token_seconds", "Between one token of a sequence and the next.", perTokenBuckets),
		duration:    histogram("request_duration_seconds", "From a request's arrival at the scheduler to its end, however it ended.", durationBuckets),
		queueTime:   histogram("queue_time_seconds", "From a request's arrival at the scheduler to its admission to the batch.", firstTokenBuckets),
		prefillTime: histogram("prefill_time_seconds", "From a request's admission to its first token: the prompt's prefill.", firstTokenBuckets),
		expertRows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "expert_rows_total",
			Help: "Token rows routed to each expert, all layers together.",
		}, []string{"expert"}),
		expertLayerRows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "expert_layer_rows_total",
			Help: "Token rows routed to each expert in each layer.",
		}, []string{"layer", "expert"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.tokens, m.promptTokens, m.running, m.waiting, m.kvUsed, m.kvBudget, m.stepTokens,
			m.ttft, m.tpot, m.duration, m.queueTime, m.prefillTime, m.expertRows, m.expertLayerRows)
	}
	return m
}

// countRoutes adds a step's routes, [layer][row], to the per-layer expert
// counters.
func (m *metrics) countRoutes(routes [][]model.Route) {
	var counts []int
	for l, layer := range routes {
		clear(counts)
		for _, rt := range layer {
			for _, e := range rt.Experts {
				if e >= len(counts) {
					counts = append(counts, make([]int, e+1-len(counts))...)
				}
				counts[e]++
			}
		}
		layerLabel := strconv.Itoa(l)
		for e, n := range counts {
			if n > 0 {
				m.expertLayerRows.WithLabelValues(layerLabel, strconv.Itoa(e)).Add(float64(n))
			}
		}
	}
}
