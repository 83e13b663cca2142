package expertnode

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"
)

// metrics are the node's Prometheus metrics, namespace moegrid, subsystem
// expertnode.
type metrics struct {
	calls       *prometheus.CounterVec
	rows        prometheus.Counter
	latency     prometheus.Histogram
	loadedBytes prometheus.Gauge
	shards      prometheus.Gauge
	// loadFailures counts shard loads that failed (each retry counts).
	loadFailures prometheus.Counter
	// loadFailing is the failed loads since the last that succeeded.
	loadFailing prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "moegrid", Subsystem: "expertnode", Name: "forward_calls_total",
			Help: "Forward calls by gRPC status code.",
		}, []string{"code"}),
		rows: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "moegrid", Subsystem: "expertnode", Name: "forward_rows_total",
			Help: "Activation rows computed.",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "moegrid", Subsystem: "expertnode", Name: "forward_duration_seconds",
			Help:    "Time to answer a Forward call, queueing included.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}),
		loadedBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "moegrid", Subsystem: "expertnode", Name: "loaded_bytes",
			Help: "Bytes of expert weights mapped.",
		}),
		shards: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "moegrid", Subsystem: "expertnode", Name: "loaded_expert_layers",
			Help: "Number of (expert, layer) pairs loaded.",
		}),
		loadFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "moegrid", Subsystem: "expertnode", Name: "shard_load_failures_total",
			Help: "Shard loads that failed; each is retried with backoff.",
		}),
		loadFailing: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "moegrid", Subsystem: "expertnode", Name: "shard_load_failing_attempts",
			Help: "Failed shard loads since the last that succeeded: above 0 while the node cannot load its placement.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.calls, m.rows, m.latency, m.loadedBytes, m.shards, m.loadFailures, m.loadFailing)
	}
	return m
}

func (m *metrics) observe(rows int, d time.Duration, err error) {
	m.calls.WithLabelValues(status.Code(toStatus(err)).String()).Inc()
	m.rows.Add(float64(rows))
	m.latency.Observe(d.Seconds())
}
