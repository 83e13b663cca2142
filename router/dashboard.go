package router

import (
	"cmp"
	"net/http"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/moegrid/moegrid/internal/dashboard"
)

// dashboardSource gives the dashboard the router's view of the cluster: the
// topology it follows, the dispatcher's ejections, and its own metrics, read
// back from the collectors rather than counted twice.
type dashboardSource struct{ r *Router }

var _ dashboard.Source = dashboardSource{}

// handleDashboard serves the live dashboard below /dashboard/ on mux and
// exports the usable replicas of each expert, which alerts watch.
func (r *Router) handleDashboard(mux *http.ServeMux) {
	dashboard.New(dashboardSource{r}, dashboard.Config{}).Register(mux)
	if r.reg != nil {
		r.reg.MustRegister(replicasCollector{r})
	}
}

// Snapshot implements dashboard.Source.
func (s dashboardSource) Snapshot() dashboard.Snapshot {
	r := s.r
	c := r.model.Config
	m := r.metrics
	snap := dashboard.Snapshot{
		Model:           r.cfg.ModelName,
		Experts:         c.NumLocalExperts,
		Layers:          c.NumHiddenLayers,
		Routed:          routedRows(m.expertLayerRows, c.NumHiddenLayers, c.NumLocalExperts),
		GeneratedTokens: uint64(readMetric(m.tokens).GetCounter().GetValue()),
		PromptTokens:    uint64(readMetric(m.promptTokens).GetCounter().GetValue()),
		Running:         int(readMetric(m.running).GetGauge().GetValue()),
		Waiting:         int(readMetric(m.waiting).GetGauge().GetValue()),
		KVUsedBytes:     int64(readMetric(m.kvUsed).GetGauge().GetValue()),
		KVBudgetBytes:   int64(readMetric(m.kvBudget).GetGauge().GetValue()),
		TTFT:            histogramOf(m.ttft),
		TBT:             histogramOf(m.tpot),
		Replicas:        make([]int, c.NumLocalExperts),
	}
	// Run sets both before it serves; a snapshot before then has no
	// cluster to show.
	if r.gossipTopo == nil || r.dispatcher == nil {
		return snap
	}
	ejected := r.dispatcher.ejectedNodes()
	snap.PlacementVersion, snap.Nodes = r.gossipTopo.dashboardNodes(ejected)
	snap.Replicas = r.gossipTopo.replicas(c.NumLocalExperts, c.NumHiddenLayers)
	return snap
}

// ejectedNodes returns the nodes ejected now.
func (d *Dispatcher) ejectedNodes() map[string]bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]bool{}
	for id, h := range d.health {
		if h.ejected {
			out[id] = true
		}
	}
	return out
}

// dashboardNodes returns the placement version and every node that has a
// record or an assignment, sorted by ID.
func (t *clusterTopology) dashboardNodes(ejected map[string]bool) (int64, []dashboard.Node) {
	t.mu.Lock()
	defer t.mu.Unlock()
	per := t.bytesPerExpertLayerLocked()
	byID := map[string]*dashboard.Node{}
	node := func(id string) *dashboard.Node {
		n := byID[id]
		if n == nil {
			n = &dashboard.Node{ID: id, State: "unregistered", Dead: t.gossip.Dead(id), Ejected: ejected[id]}
			byID[id] = n
		}
		return n
	}
	for id, rec := range t.nodes {
		n := node(id)
		n.Addr, n.State, n.Device = rec.GRPCAddr, string(rec.State), rec.Device.String()
		n.CapacityBytes, n.RowsPerSecond = rec.CapacityBytes, rec.Load.RowsPerSecond
		for _, sh := range rec.Loaded {
			n.UsedBytes += int64(sh.Layers()) * per
			n.Shards = append(n.Shards, dashboard.Shard{Expert: sh.Expert, First: sh.First, End: sh.End, Loaded: true})
		}
	}
	for _, a := range t.placement.Assignments {
		for _, id := range a.Nodes {
			n := node(id)
			i := slices.IndexFunc(n.Shards, func(s dashboard.Shard) bool {
				return s.Expert == a.Shard.Expert && s.First == a.Shard.First && s.End == a.Shard.End
			})
			if i >= 0 {
				n.Shards[i].Assigned = true
				continue
			}
			rec, ok := t.nodes[id]
			n.Shards = append(n.Shards, dashboard.Shard{
				Expert: a.Shard.Expert, First: a.Shard.First, End: a.Shard.End,
				Assigned: true, Loaded: ok && rec.Holds(a.Shard),
			})
		}
	}
	out := make([]dashboard.Node, 0, len(byID))
	for _, n := range byID {
		slices.SortFunc(n.Shards, func(a, b dashboard.Shard) int {
			return cmp.Or(cmp.Compare(a.Expert, b.Expert), cmp.Compare(a.First, b.First))
		})
		out = append(out, *n)
	}
	slices.SortFunc(out, func(a, b dashboard.Node) int { return cmp.Compare(a.ID, b.ID) })
	return t.placement.Version, out
}

// replicas returns, for each expert, the fewest holders the router may
// call over its layers.
func (t *clusterTopology) replicas(experts, layers int) []int {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]int, experts)
	for e := range experts {
		least := -1
		for l := range layers {
			if n := len(t.holders[[2]int{e, l}]); least < 0 || n < least {
				least = n
			}
		}
		out[e] = max(least, 0)
	}
	return out
}

// replicasDesc is moegrid_router_expert_replicas, read from the topology at
// each scrape.
var replicasDesc = prometheus.NewDesc("moegrid_router_expert_replicas",
	"Fewest live nodes with the expert loaded over its layers, as the router sees them; 0 means the router cannot serve it.",
	[]string{"expert"}, nil)

// replicasCollector exports the usable replicas of every expert.
type replicasCollector struct{ r *Router }

func (c replicasCollector) Describe(ch chan<- *prometheus.Desc) { ch <- replicasDesc }

func (c replicasCollector) Collect(ch chan<- prometheus.Metric) {
	experts := c.r.model.Config.NumLocalExperts
	counts := make([]int, experts)
	if c.r.gossipTopo != nil {
		counts = c.r.gossipTopo.replicas(experts, c.r.model.Config.NumHiddenLayers)
	}
	for e, n := range counts {
		ch <- prometheus.MustNewConstMetric(replicasDesc, prometheus.GaugeValue, float64(n), strconv.Itoa(e))
	}
}

// routedRows reads the per-layer expert counter into [layer][expert].
func routedRows(vec *prometheus.CounterVec, layers, experts int) [][]uint64 {
	out := make([][]uint64, layers)
	for l := range out {
		out[l] = make([]uint64, experts)
	}
	ch := make(chan prometheus.Metric)
	go func() { vec.Collect(ch); close(ch) }()
	for metric := range ch {
		pb := readMetric(metric)
		var l, e int
		var lerr, eerr error
		for _, lp := range pb.GetLabel() {
			switch lp.GetName() {
			case "layer":
				l, lerr = strconv.Atoi(lp.GetValue())
			case "expert":
				e, eerr = strconv.Atoi(lp.GetValue())
			}
		}
		if lerr == nil && eerr == nil && l >= 0 && l < layers && e >= 0 && e < experts {
			out[l][e] = uint64(pb.GetCounter().GetValue())
		}
	}
	return out
}

// readMetric reads a metric's current value; a metric that cannot say
// reads as zero.
func readMetric(m prometheus.Metric) *dto.Metric {
	var pb dto.Metric
	if m.Write(&pb) != nil {
		return &dto.Metric{}
	}
	return &pb
}

// histogramOf turns a histogram's cumulative buckets into per-bucket counts.
func histogramOf(h prometheus.Histogram) dashboard.Histogram {
	hist := readMetric(h).GetHistogram()
	out := dashboard.Histogram{}
	var below uint64
	for _, b := range hist.GetBucket() {
		out.Bounds = append(out.Bounds, b.GetUpperBound())
		out.Counts = append(out.Counts, b.GetCumulativeCount()-below)
		below = b.GetCumulativeCount()
	}
	out.Counts = append(out.Counts, hist.GetSampleCount()-below)
	return out
}
