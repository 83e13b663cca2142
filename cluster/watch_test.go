package cluster

import (
	"context"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
)

func recv[T any](t *testing.T, ch <-chan T, timeout time.Duration) T {
	t.Helper()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatalf("channel closed")
		}
		return v
	case <-time.After(timeout):
		t.Fatalf("nothing received in %v", timeout)
	}
	panic("unreachable")
}

func TestWatchPlacement(t *testing.T) {
	srv, s, _ := openStore(t)
	ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
	defer cancel()
	sess, err := concurrency.NewSession(s.Client(), concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	e := concurrency.NewElection(sess, s.Keys().Election())
	if err := e.Campaign(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	g := GuardOf(e)
	rev, err := s.WritePlacement(ctx, g, onePerNode(1), 0)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	ch := s.WatchPlacement(wctx)
	if p := recv(t, ch, 5*time.Second); p.Version != 1 {
		t.Fatalf("initial version %d, want 1", p.Version)
	}
	// A rewrite of the same version (an error note) is not delivered; the
	// next version is.
	same := onePerNode(1)
	same.Error = "insufficient capacity"
	if rev, err = s.WritePlacement(ctx, g, same, rev); err != nil {
		t.Fatal(err)
	}
	if _, err = s.WritePlacement(ctx, g, onePerNode(2), rev); err != nil {
		t.Fatal(err)
	}
	if p := recv(t, ch, 5*time.Second); p.Version != 2 || p.Error != "" {
		t.Fatalf("got version %d error %q, want 2 without error", p.Version, p.Error)
	}
	// A malformed write is skipped; an older version is ignored.
	if _, err := s.Client().Put(ctx, s.Keys().Placement(), "garbage"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client().Put(ctx, s.Keys().Placement(), mustJSON(t, onePerNode(1))); err != nil {
		t.Fatal(err)
	}
	// The watch rides out an etcd restart.
	srv.Restart()
	_, rev, err = s.Placement(ctx)
	for err != nil {
		time.Sleep(100 * time.Millisecond)
		_, rev, err = s.Placement(ctx)
	}
	if _, err = s.WritePlacement(ctx, g, onePerNode(3), rev); err != nil {
		t.Fatal(err)
	}
	if p := recv(t, ch, 10*time.Second); p.Version != 3 {
		t.Fatalf("after restart got version %d, want 3", p.Version)
	}
	wcancel()
	for range ch {
	}
}

func TestWatchNodes(t *testing.T) {
	_, s, _ := openStore(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	wctx, wcancel := context.WithCancel(ctx)
	ch := s.WatchNodes(wctx)
	if nodes := recv(t, ch, 5*time.Second); len(nodes) != 0 {
		t.Fatalf("initial nodes %v", nodes)
	}
	opts := LeaseOptions{TTL: 2 * time.Second, Refresh: time.Hour}
	r2, err := s.Register(ctx, nodeRecord("n2"), opts)
	if err != nil {
		t.Fatal(err)
	}
	r1, err := s.Register(ctx, nodeRecord("n1"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	wait := func(want ...string) {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case nodes := <-ch:
				var ids []string
				for _, n := range nodes {
					ids = append(ids, n.ID)
				}
				if len(ids) == len(want) && (len(ids) == 0 || ids[0] == want[0] && ids[len(ids)-1] == want[len(want)-1]) {
					return
				}
			case <-deadline:
				t.Fatalf("nodes %v not seen", want)
			}
		}
	}
	wait("n1", "n2")
	r2.Close()
	wait("n1")
	wcancel()
	for range ch {
	}
	ctxChanges, cancelChanges := context.WithCancel(ctx)
	changes := s.WatchChanges(ctxChanges)
	recv(t, changes, 5*time.Second)
	if err := r1.Update(ctx, func(r *NodeRecord) { r.State = StateReady }); err != nil {
		t.Fatal(err)
	}
	recv(t, changes, 5*time.Second)
	cancelChanges()
	for range changes {
	}
}
