package coordinator

import (
	"cmp"
	"slices"
	"time"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/coordinator/placement"
)

// policy is what decide needs of the configuration.
type policy struct {
	fingerprint           string
	options               placement.Options
	loadRebalanceInterval time.Duration
}

// decision is the outcome of one reconcile: the record to write, if any.
type decision struct {
	// write is set when record must be written.
	write  bool
	record cluster.PlacementRecord
	// reason says why, for the log: "initial", "membership", "load",
	// "load deferred", "error", "error cleared", "unchanged", "no model".
	reason string
	// placed counts the nodes given to placement (draining ones included).
	placed int
}

// decide computes the placement record the cluster should have. It is a
// pure function of the snapshot, the gossip verdicts (dead), the policy and
// the time (for the load rebalance interval).
func decide(snap *cluster.Snapshot, dead func(cluster.NodeRecord) bool, pol policy, now time.Time) decision {
	prev := snap.Placement
	var live []cluster.NodeRecord
	for _, n := range snap.Nodes {
		if !dead(n) {
			live = append(live, n)
		}
	}
	fp := chooseFingerprint(pol.fingerprint, prev, live)
	var model placement.Model
	known := false
	for _, n := range live {
		if n.Model.Fingerprint == fp {
			model, known = n.Model.Shape, true
			break
		}
	}
	if !known && prev.Version > 0 && prev.Fingerprint == fp {
		model, known = prev.Model, true
	}
	if !known {
		return decision{reason: "no model"}
	}
	var nodes []placement.Node
	for _, n := range live {
		if n.Model.Fingerprint != fp || n.Model.Shape != model {
			continue
		}
		nodes = append(nodes, placement.Node{ID: n.ID, CapacityBytes: n.CapacityBytes, Draining: snap.Draining(n.ID)})
	}
	load := cluster.SumLoad(snap.Loads, fp, model.Experts)
	var previous *placement.Placement
	if prev.Version > 0 && prev.Fingerprint == fp && prev.Model == model {
		p := prev.Placement
		previous = &p
	}
	in := placement.Input{Nodes: nodes, Model: model, Load: load, Options: pol.options, Previous: previous}
	p, err := placement.Compute(in)
	if err != nil {
		// Keep the last complete placement in force and say why there is
		// no new one.
		rec := prev
		rec.Error = err.Error()
		if rec.Version == 0 {
			rec.Fingerprint = fp
		}
		return decision{write: rec.Error != prev.Error, record: rec, reason: "error", placed: len(nodes)}
	}
	reason := "membership"
	if previous == nil {
		reason = "initial"
	}
	used := load
	if previous != nil && !slices.Equal(load, prev.Load) && !samePlacement(p, *previous) {
		// Is the load the only thing moving shards? Then it may wait.
		old := in
		old.Load = prev.Load
		if p0, err := placement.Compute(old); err == nil && samePlacement(p0, *previous) {
			if now.Sub(prev.Written) < pol.loadRebalanceInterval {
				p, used, reason = p0, prev.Load, "load deferred"
			} else {
				reason = "load"
			}
		}
	}
	if previous != nil && samePlacement(p, *previous) {
		if prev.Error != "" {
			rec := prev
			rec.Error = ""
			return decision{write: true, record: rec, reason: "error cleared", placed: len(nodes)}
		}
		if reason != "load deferred" {
			reason = "unchanged"
		}
		return decision{record: prev, reason: reason, placed: len(nodes)}
	}
	p.Version = prev.Version + 1
	return decision{
		write:  true,
		record: cluster.PlacementRecord{Placement: p, Fingerprint: fp, Load: used},
		reason: reason,
		placed: len(nodes),
	}
}

// chooseFingerprint picks the checkpoint to place: the configured one; else
// the current placement's while a live node serves it; else the one most
// live nodes serve (ties: the smallest).
func chooseFingerprint(configured string, prev cluster.PlacementRecord, live []cluster.NodeRecord) string {
	if configured != "" {
		return configured
	}
	count := make(map[string]int)
	for _, n := range live {
		count[n.Model.Fingerprint]++
	}
	if prev.Fingerprint != "" && (count[prev.Fingerprint] > 0 || len(live) == 0) {
		return prev.Fingerprint
	}
	best := ""
	for fp, c := range count {
		if c > count[best] || c == count[best] && cmp.Less(fp, best) {
			best = fp
		}
	}
	return best
}

// samePlacement reports whether two placements assign the same shards of
// the same model to the same nodes, whatever their versions.
func samePlacement(a, b placement.Placement) bool {
	return a.Model == b.Model && slices.EqualFunc(a.Assignments, b.Assignments, func(x, y placement.Assignment) bool {
		return x.Shard == y.Shard && slices.Equal(x.Nodes, y.Nodes)
	})
}
