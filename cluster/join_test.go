package cluster

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/moegrid/moegrid/cluster/etcdtest"
)

// TestJoin joins two members through one etcd: the second finds the first's
// gossip address in its node record, with no Join list.
func TestJoin(t *testing.T) {
	srv := etcdtest.Start(t)
	log, _ := testLogger(t)
	join := func(id string, role Role) *Membership {
		t.Helper()
		m, err := Join(t.Context(), JoinConfig{EtcdEndpoints: srv.Endpoints(), Prefix: DefaultPrefix, Gossip: fastGossip(id, role)}, log)
		if err != nil {
			t.Fatalf("Join(%s): %v", id, err)
		}
		t.Cleanup(func() {
			if err := m.Close(); err != nil {
				t.Errorf("Close(%s): %v", id, err)
			}
		})
		return m
	}
	node := join("n1", RoleNode)
	rec := nodeRecord("n1")
	rec.GossipAddr = node.Gossip.Addr()
	reg, err := node.Store.Register(t.Context(), rec, LeaseOptions{TTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()

	router := join("r1", RoleRouter)
	eventually(t, 10*time.Second, "router sees the node", func() error {
		if !router.Gossip.Alive("n1") {
			return errorf("n1 not alive: %+v", router.Gossip.Members())
		}
		return nil
	})
}

// TestJoinUnreachable waits for an etcd that never answers until ctx ends,
// then returns ctx's error holding nothing: its gossip port is never taken
// and goleak finds no goroutine left.
func TestJoinUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gossipAddr := l.Addr().String()
	l.Close()
	cfg := fastGossip("n1", RoleNode)
	cfg.BindAddr = gossipAddr
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	m, err := Join(ctx, JoinConfig{EtcdEndpoints: []string{"http://" + gossipAddr}, Prefix: DefaultPrefix, Gossip: cfg}, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Join = %v, %v; want DeadlineExceeded", m, err)
	}
	l, err = net.Listen("tcp", gossipAddr)
	if err != nil {
		t.Fatalf("gossip address held after a failed Join: %v", err)
	}
	l.Close()
}
