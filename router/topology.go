package router

import (
	"context"
	"sync"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/coordinator/placement"
)

// clusterTopology is the Topology the router follows in a cluster: the
// placement and node records from etcd, node health from gossip. A node may
// serve a shard when the current placement assigns it, its record reports the
// shard loaded, and gossip has not declared it dead.
type clusterTopology struct {
	fingerprint string
	gossip      *cluster.Gossip

	mu        sync.Mutex
	placement placement.Placement           // protected by mu
	nodes     map[string]cluster.NodeRecord // protected by mu
	holders   map[[2]int][]Endpoint         // protected by mu; by (expert, layer)
	changed   chan struct{}                 // protected by mu; closed on change

	// onChange, if set before run, is called after every rebuild with the
	// addresses of all nodes of the model; it must not block.
	onChange func(addrs map[string]bool)
}

var _ Topology = (*clusterTopology)(nil)

func newClusterTopology(fingerprint string, gossip *cluster.Gossip) *clusterTopology {
	return &clusterTopology{
		fingerprint: fingerprint,
		gossip:      gossip,
		nodes:       map[string]cluster.NodeRecord{},
		holders:     map[[2]int][]Endpoint{},
		changed:     make(chan struct{}),
	}
}

// Holders implements Topology.
func (t *clusterTopology) Holders(expert, layer int) []Endpoint {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.holders[[2]int{expert, layer}]
}

// Changed implements Topology.
func (t *clusterTopology) Changed() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changed
}

// Version is the placement version being followed.
func (t *clusterTopology) Version() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.placement.Version
}

// Complete reports whether every (expert, layer) of the model has a holder.
func (t *clusterTopology) Complete(experts, layers int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for e := range experts {
		for l := range layers {
			if len(t.holders[[2]int{e, l}]) == 0 {
				return false
			}
		}
	}
	return true
}

// run follows etcd and gossip until ctx is done.
func (t *clusterTopology) run(ctx context.Context, st *cluster.Store) {
	places := st.WatchPlacement(ctx)
	nodes := st.WatchNodes(ctx)
	gossipChanged, unsubscribe := t.gossip.Subscribe()
	defer unsubscribe()
	for {
		select {
		case <-ctx.Done():
			return
		case p, ok := <-places:
			if !ok {
				return
			}
			if p.Fingerprint != "" && p.Fingerprint != t.fingerprint {
				continue
			}
			t.mu.Lock()
			t.placement = p.Placement
			t.rebuildLocked()
			t.mu.Unlock()
		case recs, ok := <-nodes:
			if !ok {
				return
			}
			t.mu.Lock()
			t.nodes = make(map[string]cluster.NodeRecord, len(recs))
			addrs := make(map[string]bool, len(recs))
			for _, r := range recs {
				if r.Model.Fingerprint == t.fingerprint {
					t.nodes[r.ID] = r
					addrs[r.GRPCAddr] = true
				}
			}
			t.rebuildLocked()
			t.mu.Unlock()
			if t.onChange != nil {
				t.onChange(addrs)
			}
		case <-gossipChanged:
			t.mu.Lock()
			t.rebuildLocked()
			t.mu.Unlock()
		}
	}
}

// rebuildLocked recomputes the holders and signals a change.
func (t *clusterTopology) rebuildLocked() {
	holders := map[[2]int][]Endpoint{}
	for _, a := range t.placement.Assignments {
		for _, id := range a.Nodes {
			rec, ok := t.nodes[id]
			if !ok || !rec.Holds(a.Shard) || rec.State == cluster.StateDraining || t.gossip.Dead(id) {
				continue
			}
			for l := a.Shard.First; l < a.Shard.End; l++ {
				k := [2]int{a.Shard.Expert, l}
				holders[k] = append(holders[k], Endpoint{NodeID: id, Addr: rec.GRPCAddr})
			}
		}
	}
	t.holders = holders
	close(t.changed)
	t.changed = make(chan struct{})
}
