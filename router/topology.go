package router

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"google.golang.org/grpc/connectivity"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/placement"
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
	// candidates are the IDs of the coordinators in the election, the
	// leader among them; known is false until etcd has answered once.
	candidates  []string // protected by mu
	leaderKnown bool     // protected by mu
	// etcdUp reports whether the etcd client is connected now; nil until
	// run starts.
	etcdUp func() bool // protected by mu
	// unreachable are the addresses of nodes whose connection from the
	// dispatcher was lost and is not back, protected by mu. A killed node's
	// connection breaks at once, where gossip takes seconds to declare it
	// dead: until it is back the node holds nothing for readiness and for
	// whether a request may wait for a holder. It stays a holder to route
	// to (its calls fail at once and go to a replica, and count toward its
	// ejection), as gossip has the last word on death.
	unreachable map[string]bool

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
		unreachable: map[string]bool{},
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

// Complete reports whether every (expert, layer) of the model has a holder
// whose connection is not known to be lost.
func (t *clusterTopology) Complete(experts, layers int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	reachable := func(ep Endpoint) bool { return !t.unreachable[ep.Addr] }
	for e := range experts {
		for l := range layers {
			if !slices.ContainsFunc(t.holders[[2]int{e, l}], reachable) {
				return false
			}
		}
	}
	return true
}

// setReachable records that the dispatcher's connection to the node at
// addr was lost (up false) or is ready (up true), and signals a change
// when that changes what was known.
func (t *clusterTopology) setReachable(addr string, up bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if up != t.unreachable[addr] {
		return
	}
	if up {
		delete(t.unreachable, addr)
	} else {
		t.unreachable[addr] = true
	}
	t.notifyLocked()
}

// errNoLeader and errNoCapacity say why a missing holder cannot come back.
var (
	errNoLeader   = errors.New("no coordinator leader is elected to re-place them")
	errNoCapacity = errors.New("no live node has the capacity to load them")
)

// Replaceable reports whether expert of layer, which has no live, loaded
// holder, may get one: nil while a live node is assigned it and loading, or
// a leader exists and some live node holds it already or has the free capacity
// (its record's capacity less the bytes it has loaded) to take its shard;
// otherwise an error saying why not. While etcd is unreachable, or before it
// has answered, what it says is stale, so Replaceable answers nil and the
// wait stays bounded by WaitForHolder alone.
func (t *clusterTopology) Replaceable(expert, layer int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.leaderKnown || t.etcdUp == nil || !t.etcdUp() {
		return nil
	}
	shard := placement.Shard{Expert: expert, First: layer, End: layer + 1}
	for _, a := range t.placement.Assignments {
		if a.Shard.Expert != expert || !a.Shard.Contains(layer) {
			continue
		}
		shard = a.Shard
		for _, id := range a.Nodes {
			if t.liveLocked(id) {
				return nil // assigned to a live node that is loading it
			}
		}
	}
	if !t.leaderLocked() {
		return errNoLeader
	}
	per := t.bytesPerExpertLayerLocked()
	need := int64(shard.Layers()) * per
	for id, rec := range t.nodes {
		if !t.liveLocked(id) {
			continue
		}
		if rec.Holds(shard) {
			// Loaded on a live node the placement does not name yet: the
			// record's watch can deliver before the placement's.
			return nil
		}
		used := int64(0)
		for _, s := range rec.Loaded {
			used += int64(s.Layers()) * per
		}
		if rec.CapacityBytes-used >= need {
			return nil
		}
	}
	return fmt.Errorf("%w (%d bytes free needed for a shard)", errNoCapacity, need)
}

// bytesPerExpertLayerLocked is the size of one expert in one layer, from the
// placement or, before there is one, any node record.
func (t *clusterTopology) bytesPerExpertLayerLocked() int64 {
	if b := t.placement.Model.BytesPerExpertLayer; b > 0 {
		return b
	}
	for _, rec := range t.nodes {
		return rec.Model.Shape.BytesPerExpertLayer
	}
	return 0
}

// leaderLocked reports whether a coordinator that can re-place holds the
// election or waits to: a candidate gossip has not declared dead. A killed
// leader's key outlives it by its lease's time to live; gossip tells in
// about the time it tells of a dead expert node, so a request is not kept
// waiting on a leader that is gone. A coordinator that does not gossip
// counts while its key lasts.
func (t *clusterTopology) leaderLocked() bool {
	return slices.ContainsFunc(t.candidates, func(id string) bool { return !t.gossip.Dead(id) })
}

// liveLocked reports whether node id is registered, not draining, not
// declared dead by gossip and not cut off from the dispatcher.
func (t *clusterTopology) liveLocked(id string) bool {
	rec, ok := t.nodes[id]
	return ok && rec.State != cluster.StateDraining && !t.gossip.Dead(id) && !t.unreachable[rec.GRPCAddr]
}

// run follows etcd and gossip until ctx is done.
func (t *clusterTopology) run(ctx context.Context, st *cluster.Store) {
	conn := st.Client().ActiveConnection()
	t.mu.Lock()
	t.etcdUp = func() bool { return conn.GetState() == connectivity.Ready }
	t.mu.Unlock()
	places := st.WatchPlacement(ctx)
	nodes := st.WatchNodes(ctx)
	candidates := st.WatchCandidates(ctx)
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
			// The dispatcher closes its connections to addresses no node
			// has any more, and their losses with them.
			for a := range t.unreachable {
				if !addrs[a] {
					delete(t.unreachable, a)
				}
			}
			t.rebuildLocked()
			t.mu.Unlock()
			if t.onChange != nil {
				t.onChange(addrs)
			}
		case ids, ok := <-candidates:
			if !ok {
				return
			}
			// A rebuild signals the change (as it does on gossip's):
			// requests waiting for a holder look again at whether one can
			// come.
			t.mu.Lock()
			t.candidates, t.leaderKnown = ids, true
			t.rebuildLocked()
			t.mu.Unlock()
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
	t.notifyLocked()
}

// notifyLocked wakes everything waiting on Changed.
func (t *clusterTopology) notifyLocked() {
	close(t.changed)
	t.changed = make(chan struct{})
}

// replaceable is a Topology that can tell whether an expert without a
// holder may get one; see clusterTopology.Replaceable.
type replaceable interface {
	Replaceable(expert, layer int) error
}

// unreplaceable returns ErrNoLiveReplica naming the orphans of layer that
// have no live holder (one the dispatcher can still reach) and cannot get
// one, and why; nil when every orphan may still get a holder, or the
// topology cannot tell. Orphans whose live holders only failed this
// layer's calls are left to the wait: gossip or a new placement settles
// them.
func unreplaceable(topo Topology, layer int, batches []model.ExpertBatch, orphans []int) error {
	r, ok := topo.(replaceable)
	if !ok {
		return nil
	}
	var experts []int
	var why []string
	for _, bi := range orphans {
		e := batches[bi].Expert
		if err := r.Replaceable(e, layer); err != nil {
			experts = append(experts, e)
			if !slices.Contains(why, err.Error()) {
				why = append(why, err.Error())
			}
		}
	}
	if len(experts) == 0 {
		return nil
	}
	slices.Sort(experts)
	return fmt.Errorf("%w: experts %v of layer %d have no live, loaded holder and cannot get one: %s",
		ErrNoLiveReplica, slices.Compact(experts), layer, strings.Join(why, "; "))
}
