package cluster

import (
	"context"
	"slices"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// WatchCandidates follows the election: no one with no candidate, the
// candidates' IDs while one leads or others wait to, no one once the last
// session is gone.
func TestWatchCandidates(t *testing.T) {
	srv, s, _ := openStore(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	candidates := s.WatchCandidates(ctx)
	expect := func(want ...string) {
		t.Helper()
		for {
			select {
			case got := <-candidates:
				if slices.Equal(got, want) {
					return
				}
			case <-ctx.Done():
				t.Fatalf("candidates never became %q", want)
			}
		}
	}
	expect()
	sess, err := concurrency.NewSession(srv.Client(t), concurrency.WithTTL(1))
	if err != nil {
		t.Fatal(err)
	}
	e := concurrency.NewElection(sess, s.Keys().Election())
	if err := e.Campaign(ctx, "coordinator-a"); err != nil {
		t.Fatal(err)
	}
	expect("coordinator-a")
	// A second candidate waits behind the leader, its key already written.
	sessB, err := concurrency.NewSession(srv.Client(t), concurrency.WithTTL(1))
	if err != nil {
		t.Fatal(err)
	}
	bctx, stopB := context.WithCancel(ctx)
	campaignB := make(chan error, 1)
	go func() {
		campaignB <- concurrency.NewElection(sessB, s.Keys().Election()).Campaign(bctx, "coordinator-b")
	}()
	expect("coordinator-a", "coordinator-b")
	stopB()
	<-campaignB
	if err := sessB.Close(); err != nil {
		t.Fatal(err)
	}
	expect("coordinator-a")
	if err := e.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	expect()
	if err := e.Campaign(ctx, "coordinator-a"); err != nil {
		t.Fatal(err)
	}
	expect("coordinator-a")
	// A crashed leader's key goes with its lease.
	if err := sess.Close(); err != nil {
		t.Fatal(err)
	}
	expect()
	cancel()
	for range candidates {
	}
}
