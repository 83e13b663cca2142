package coordinator

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/coordinator/placement"
)

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// snapshot builds a snapshot with the given nodes and placement.
func snapshot(prev cluster.PlacementRecord, nodes ...cluster.NodeRecord) *cluster.Snapshot {
	return &cluster.Snapshot{Placement: prev, Nodes: nodes, Drains: map[string]cluster.DrainMark{}}
}

func nodesN(n int, capacity int64) []cluster.NodeRecord {
	var out []cluster.NodeRecord
	for i := range n {
		out = append(out, nodeRecord(fmt.Sprintf("n%d", i+1), capacity))
	}
	return out
}

func never(cluster.NodeRecord) bool { return false }

var basePolicy = policy{options: placement.Options{MinReplicas: 1}, loadRebalanceInterval: 5 * time.Minute}

// apply plays a decision onto the snapshot as the leader would.
func apply(s *cluster.Snapshot, d decision, now time.Time) {
	if d.write {
		s.Placement = d.record
		s.Placement.Written = now
	}
}

func TestDecide(t *testing.T) {
	t.Run("initial then unchanged", func(t *testing.T) {
		s := snapshot(cluster.PlacementRecord{}, nodesN(8, expertBytes)...)
		d := decide(s, never, basePolicy, t0)
		if !d.write || d.reason != "initial" || d.record.Version != 1 || d.record.Fingerprint != testFP || d.placed != 8 {
			t.Fatalf("decision %+v", d)
		}
		for _, id := range ids(8) {
			if len(d.record.ShardsOf(id)) != 1 {
				t.Errorf("%s holds %v", id, d.record.ShardsOf(id))
			}
		}
		apply(s, d, t0)
		if d := decide(s, never, basePolicy, t0.Add(time.Second)); d.write || d.reason != "unchanged" {
			t.Fatalf("second decision %+v", d)
		}
	})
	t.Run("no nodes no placement", func(t *testing.T) {
		if d := decide(snapshot(cluster.PlacementRecord{}), never, basePolicy, t0); d.write || d.reason != "no model" {
			t.Fatalf("decision %+v", d)
		}
	})
	t.Run("death, gossip death and drain move shards", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			mut  func(*cluster.Snapshot) func(cluster.NodeRecord) bool
		}{
			{"record gone", func(s *cluster.Snapshot) func(cluster.NodeRecord) bool {
				s.Nodes = s.Nodes[:2]
				return never
			}},
			{"gossip dead", func(s *cluster.Snapshot) func(cluster.NodeRecord) bool {
				return func(n cluster.NodeRecord) bool { return n.ID == "n3" }
			}},
			{"state draining", func(s *cluster.Snapshot) func(cluster.NodeRecord) bool {
				s.Nodes[2].State = cluster.StateDraining
				return never
			}},
			{"drain mark", func(s *cluster.Snapshot) func(cluster.NodeRecord) bool {
				s.Drains["n3"] = cluster.DrainMark{NodeID: "n3", NodeStarted: s.Nodes[2].Started}
				return never
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				s := snapshot(cluster.PlacementRecord{}, nodesN(3, 8*expertBytes)...)
				d := decide(s, never, basePolicy, t0)
				apply(s, d, t0)
				before := s.Placement
				dead := tc.mut(s)
				d = decide(s, dead, basePolicy, t0.Add(time.Second))
				if !d.write || d.reason != "membership" || d.record.Version != 2 {
					t.Fatalf("decision %+v", d)
				}
				if got := d.record.ShardsOf("n3"); len(got) != 0 {
					t.Errorf("n3 still holds %v", got)
				}
				// Only n3's shards moved.
				if m, want := placement.Moves(before.Placement, d.record.Placement), len(before.ShardsOf("n3")); m != want {
					t.Errorf("moves %d, want %d", m, want)
				}
			})
		}
	})
	t.Run("stale drain mark ignored", func(t *testing.T) {
		s := snapshot(cluster.PlacementRecord{}, nodesN(2, 8*expertBytes)...)
		s.Drains["n2"] = cluster.DrainMark{NodeID: "n2", NodeStarted: s.Nodes[1].Started.Add(-time.Hour)}
		d := decide(s, never, basePolicy, t0)
		if len(d.record.ShardsOf("n2")) == 0 {
			t.Errorf("n2 treated as drained by a mark of another incarnation")
		}
	})
	t.Run("insufficient capacity keeps the placement", func(t *testing.T) {
		s := snapshot(cluster.PlacementRecord{}, nodesN(8, expertBytes)...)
		apply(s, decide(s, never, basePolicy, t0), t0)
		good := s.Placement
		s.Nodes = s.Nodes[1:]
		d := decide(s, never, basePolicy, t0)
		if !d.write || d.reason != "error" || !strings.Contains(d.record.Error, "insufficient capacity") ||
			d.record.Version != good.Version || !samePlacement(d.record.Placement, good.Placement) {
			t.Fatalf("decision %+v", d)
		}
		apply(s, d, t0)
		if d := decide(s, never, basePolicy, t0); d.write {
			t.Fatalf("same error written again: %+v", d)
		}
		// The node comes back: same placement as before, error cleared.
		s.Nodes = nodesN(8, expertBytes)
		d = decide(s, never, basePolicy, t0)
		if !d.write || d.reason != "error cleared" || d.record.Error != "" || d.record.Version != good.Version {
			t.Fatalf("decision %+v", d)
		}
	})
	t.Run("no placement possible from the start", func(t *testing.T) {
		s := snapshot(cluster.PlacementRecord{}, nodesN(1, expertBytes)...)
		d := decide(s, never, basePolicy, t0)
		if !d.write || d.record.Version != 0 || d.record.Error == "" || d.record.Fingerprint != testFP {
			t.Fatalf("decision %+v", d)
		}
		if err := d.record.Validate(); err != nil {
			t.Fatalf("record invalid: %v", err)
		}
	})
	t.Run("all nodes gone", func(t *testing.T) {
		s := snapshot(cluster.PlacementRecord{}, nodesN(2, 8*expertBytes)...)
		apply(s, decide(s, never, basePolicy, t0), t0)
		s.Nodes = nil
		d := decide(s, never, basePolicy, t0)
		if !d.write || !strings.Contains(d.record.Error, "no schedulable nodes") || d.record.Version != 1 {
			t.Fatalf("decision %+v", d)
		}
	})
	t.Run("fingerprints", func(t *testing.T) {
		nodes := nodesN(3, 8*expertBytes)
		nodes[0].Model.Fingerprint = "other"
		s := snapshot(cluster.PlacementRecord{}, nodes...)
		d := decide(s, never, basePolicy, t0)
		if d.record.Fingerprint != testFP || len(d.record.ShardsOf("n1")) != 0 {
			t.Fatalf("majority fingerprint not chosen: %+v", d.record)
		}
		pol := basePolicy
		pol.fingerprint = "other"
		if d := decide(s, never, pol, t0); d.record.Fingerprint != "other" || !slicesEqual(d.record.Nodes(), []string{"n1"}) {
			t.Fatalf("configured fingerprint: %+v", d.record)
		}
		// A placed fingerprint stays while a node serves it, even when
		// outnumbered.
		apply(s, decide(s, never, pol, t0), t0)
		for i := range 2 {
			s.Nodes[i+1].Model.Fingerprint = "third"
		}
		if d := decide(s, never, basePolicy, t0); d.write || d.record.Fingerprint != "other" {
			t.Fatalf("fingerprint switched: %+v", d)
		}
	})
}

func slicesEqual(a, b []string) bool { return strings.Join(a, ",") == strings.Join(b, ",") }

// TestDecideLoad: with more nodes than experts the extra replicas follow the
// routers' load, but a change caused by load alone waits for the rebalance
// interval; a membership change uses the new load at once.
func TestDecideLoad(t *testing.T) {
	s := snapshot(cluster.PlacementRecord{}, nodesN(9, 2*expertBytes)...)
	hot := func(e int) []float64 {
		l := make([]float64, testModel.Experts)
		for i := range l {
			l[i] = 1
		}
		l[e] = 100
		return l
	}
	s.Loads = []cluster.LoadRecord{{RouterID: "r", Fingerprint: testFP, TokensPerSecond: hot(2)}}
	d := decide(s, never, basePolicy, t0)
	apply(s, d, t0)
	if h := d.record.HoldersOf(2, 0); len(h) != 2 {
		t.Fatalf("hot expert 2 has holders %v, want 2", h)
	}
	// Expert 5 becomes the hot one.
	s.Loads[0].TokensPerSecond = hot(5)
	d = decide(s, never, basePolicy, t0.Add(time.Minute))
	if d.write || d.reason != "load deferred" {
		t.Fatalf("load change within the interval: %+v", d)
	}
	d = decide(s, never, basePolicy, t0.Add(6*time.Minute))
	if !d.write || d.reason != "load" || len(d.record.HoldersOf(5, 0)) != 2 {
		t.Fatalf("load change after the interval: %+v (holders of 5: %v)", d, d.record.HoldersOf(5, 0))
	}
	if moves := placement.Moves(s.Placement.Placement, d.record.Placement); moves != 1 {
		t.Errorf("load rebalance moved %d replicas, want 1", moves)
	}
}

func TestConfigValidate(t *testing.T) {
	// The defaults lack only an identity: secure by default means a
	// certificate or an explicit --insecure.
	if err := func() error { c := DefaultConfig(); return c.Validate() }(); err == nil || !strings.Contains(err.Error(), "--tls-cert") {
		t.Errorf("DefaultConfig without an identity: %v, want it to ask for --tls-cert", err)
	}
	if err := func() error { c := DefaultConfig(); c.Security.Insecure = true; return c.Validate() }(); err != nil {
		t.Fatalf("DefaultConfig with --insecure invalid: %v", err)
	}
	c := DefaultConfig()
	c.ID = ""
	c.EtcdEndpoints = nil
	c.Prefix = "nope"
	c.GRPCAddr = "7070"
	c.LeaseTTL = 100 * time.Millisecond
	c.MinReplicas = 0
	c.MaxReplicas = -1
	c.ResyncInterval = 0
	err := c.Validate()
	for _, want := range []string{"id:", "etcd endpoints", "prefix", "grpc address", "lease ttl", "min replicas", "max replicas", "resync interval"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want mention of %q", err, want)
		}
	}
	if _, err := New(c, nil, nil); err == nil {
		t.Errorf("New accepted an invalid config")
	}
}
