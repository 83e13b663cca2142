package router

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the router's Prometheus metrics, namespace moegrid, subsystem
// router.
type metrics struct {
	requests   *prometheus.CounterVec
	tokens     prometheus.Counter
	running    prometheus.Gauge
	waiting    prometheus.Gauge
	stepTokens prometheus.Histogram
	expertRows *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "requests_total",
			Help: "Generation requests by API and gRPC status code.",
		}, []string{"api", "code"}),
		tokens: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "generated_tokens_total",
			Help: "Tokens sampled.",
		}),
		running: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "running_sequences",
			Help: "Sequences in the running batch.",
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "waiting_requests",
			Help: "Requests waiting for a place in the batch.",
		}),
		stepTokens: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "step_tokens",
			Help:    "Tokens computed per scheduler step.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12),
		}),
		expertRows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "expert_rows_total",
			Help: "Token rows routed to each expert, all layers together.",
		}, []string{"expert"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.tokens, m.running, m.waiting, m.stepTokens, m.expertRows)
	}
	return m
}
