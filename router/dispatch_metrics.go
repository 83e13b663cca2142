package router

import (
	"github.com/prometheus/client_golang/prometheus"
)

// dispatchMetrics are the dispatcher's Prometheus metrics, namespace
// moegrid, subsystem router, each by node.
type dispatchMetrics struct {
	retries   *prometheus.CounterVec
	hedges    *prometheus.CounterVec
	ejections *prometheus.CounterVec
	latency   *prometheus.HistogramVec
}

// newDispatchMetrics builds the metrics and registers them with reg; a nil
// reg leaves them unregistered but usable.
func newDispatchMetrics(reg prometheus.Registerer) *dispatchMetrics {
	m := &dispatchMetrics{
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "hop_retries_total",
			Help: "Expert calls that failed on a node and went to another holder, by the node that failed.",
		}, []string{"node"}),
		hedges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "hop_hedges_total",
			Help: "Expert calls that ran past their expected time on a node and were sent to another holder too, by the slow node.",
		}, []string{"node"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "hop_ejections_total",
			Help: "Times a node was ejected after consecutive failures or timeouts.",
		}, []string{"node"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "moegrid", Subsystem: "router", Name: "hop_duration_seconds",
			Help:    "Time from sending an expert call to a node to its answer, successful calls only.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 18),
		}, []string{"node"}),
	}
	if reg != nil {
		reg.MustRegister(m.retries, m.hedges, m.ejections, m.latency)
	}
	return m
}
