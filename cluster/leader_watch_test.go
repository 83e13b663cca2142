package cluster

import (
	"context"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// WatchLeader follows the election: false with no candidate, true while one
// leads or another waits to, false once the last session is gone.
func TestWatchLeader(t *testing.T) {
	srv, s, _ := openStore(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	leaders := s.WatchLeader(ctx)
	expect := func(want bool) {
		t.Helper()
		for {
			select {
			case got := <-leaders:
				if got == want {
					return
				}
			case <-ctx.Done():
				t.Fatalf("leader never became %v", want)
			}
		}
	}
	expect(false)
	sess, err := concurrency.NewSession(srv.Client(t), concurrency.WithTTL(1))
	if err != nil {
		t.Fatal(err)
	}
	e := concurrency.NewElection(sess, s.Keys().Election())
	if err := e.Campaign(ctx, "coordinator-a"); err != nil {
		t.Fatal(err)
	}
	expect(true)
	if err := e.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	expect(false)
	if err := e.Campaign(ctx, "coordinator-a"); err != nil {
		t.Fatal(err)
	}
	expect(true)
	// A crashed leader's key goes with its lease.
	if err := sess.Close(); err != nil {
		t.Fatal(err)
	}
	expect(false)
	cancel()
	for range leaders {
	}
}
