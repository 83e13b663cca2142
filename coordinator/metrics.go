package coordinator

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the coordinator's own Prometheus metrics, namespace
// "moegrid", subsystem "coordinator".
type metrics struct {
	leader           prometheus.Gauge
	placementVersion prometheus.Gauge
	reconciles       *prometheus.CounterVec
	writes           *prometheus.CounterVec
	nodes            *prometheus.GaugeVec
}

// nodeStates are the values of the nodes gauge's state label.
var nodeStates = []string{"joining", "ready", "draining", "dead"}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "moegrid", "coordinator"
	m := &metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "leader",
			Help: "1 while this replica holds the coordinator election, else 0.",
		}),
		placementVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "placement_version",
			Help: "Version of the placement in etcd as this replica last read it.",
		}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "reconcile_total",
			Help: "Reconciles run by the leader, by result: unchanged, written, error.",
		}, []string{"result"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "placement_writes_total",
			Help: "Placement writes attempted, by result: ok, not_leader, stale, error.",
		}, []string{"result"}),
		nodes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "nodes",
			Help: "Registered expert nodes by state (dead: registered but declared dead by gossip).",
		}, []string{"state"}),
	}
	for _, r := range []string{"unchanged", "written", "error"} {
		m.reconciles.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "not_leader", "stale", "error"} {
		m.writes.WithLabelValues(r)
	}
	for _, s := range nodeStates {
		m.nodes.WithLabelValues(s)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.leader, m.placementVersion, m.reconciles, m.writes, m.nodes} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
