package cluster

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/moegrid/moegrid/placement"
)

// onePerNode places expert e on node "n<e>".
func onePerNode(version int64) PlacementRecord {
	rec := PlacementRecord{Placement: placement.Placement{Version: version, Model: testModel}, Fingerprint: "sha256:test"}
	for e := range testModel.Experts {
		rec.Assignments = append(rec.Assignments, placement.Assignment{
			Shard: placement.Shard{Expert: e, End: testModel.Layers},
			Nodes: []string{"n" + string(rune('0'+e))},
		})
	}
	return rec
}

// TestWritePlacementGuard: a deposed leader's write fails with ErrNotLeader
// although it still believes it leads; a write from an old read fails with
// ErrStale.
func TestWritePlacementGuard(t *testing.T) {
	srv, s, _ := openStore(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	campaign := func(id string) (*concurrency.Session, *concurrency.Election) {
		t.Helper()
		// A client of its own, as each replica has.
		sess, err := concurrency.NewSession(srv.Client(t), concurrency.WithTTL(1))
		if err != nil {
			t.Fatal(err)
		}
		e := concurrency.NewElection(sess, s.Keys().Election())
		if err := e.Campaign(ctx, id); err != nil {
			t.Fatal(err)
		}
		return sess, e
	}
	sessA, eA := campaign("a")
	guardA := GuardOf(eA)
	rev, err := s.WritePlacement(ctx, guardA, onePerNode(1), 0)
	if err != nil {
		t.Fatalf("leader write: %v", err)
	}
	if _, err := s.WritePlacement(ctx, guardA, onePerNode(2), 0); !errors.Is(err, ErrStale) {
		t.Fatalf("write from a stale read = %v, want ErrStale", err)
	}
	snap, err := s.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Leader != "a" || snap.Placement.Version != 1 || snap.PlacementModRevision != rev {
		t.Fatalf("snapshot leader %q version %d rev %d, want a 1 %d", snap.Leader, snap.Placement.Version, snap.PlacementModRevision, rev)
	}

	// A loses its lease without knowing (as in a long GC pause or a
	// partition): B is elected; A's write with its old guard must fail.
	sessA.Orphan()
	if _, err := s.Client().Revoke(ctx, sessA.Lease()); err != nil {
		t.Fatal(err)
	}
	sessB, eB := campaign("b")
	defer sessB.Close()
	if _, err := s.WritePlacement(ctx, guardA, onePerNode(2), rev); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("deposed leader's write = %v, want ErrNotLeader", err)
	}
	if _, err := s.WritePlacement(ctx, GuardOf(eB), onePerNode(2), rev); err != nil {
		t.Fatalf("new leader's write: %v", err)
	}
	if _, err := s.WritePlacement(ctx, LeaderGuard{Key: "/elsewhere/x", Rev: 1}, onePerNode(3), 0); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("foreign guard = %v, want ErrNotLeader", err)
	}
	bad := onePerNode(3)
	bad.Assignments = bad.Assignments[1:]
	if _, err := s.WritePlacement(ctx, GuardOf(eB), bad, 0); err == nil {
		t.Fatalf("incomplete placement written")
	}
	p, _, err := s.Placement(ctx)
	if err != nil || p.Version != 2 {
		t.Fatalf("Placement = v%d, %v; want v2", p.Version, err)
	}
}
