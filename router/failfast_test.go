package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/cluster/etcdtest"
	"github.com/moegrid/moegrid/internal/serve"
	"github.com/moegrid/moegrid/placement"
)

// failCluster is a router's view of a cluster in embedded etcd: the cluster
// topology following it, a coordinator election the test campaigns in by
// hand, and /readyz served by the router's readiness loop.
type failCluster struct {
	etcd     *etcdtest.Server
	st       *cluster.Store
	topo     *clusterTopology
	shape    placement.Model
	readyURL string
	election *concurrency.Election
}

const failFingerprint = "failfast-fp"

func startFailCluster(t *testing.T) *failCluster {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	log := slog.New(slog.DiscardHandler)
	st, err := cluster.Open(ctx, cli, "/moegrid/failfast/", log)
	if err != nil {
		t.Fatal(err)
	}
	g, err := cluster.StartGossip(cluster.DefaultGossipConfig("router-ff", cluster.RoleRouter), log)
	if err != nil {
		t.Fatal(err)
	}
	fc := &failCluster{
		etcd:  srv,
		st:    st,
		topo:  newClusterTopology(failFingerprint, g),
		shape: placement.Model{Experts: fx.model.Config.NumLocalExperts, Layers: fx.model.Config.NumHiddenLayers, BytesPerExpertLayer: 1000},
	}
	servers, err := serve.New(serve.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"}, prometheus.NewRegistry(), log)
	if err != nil {
		t.Fatal(err)
	}
	if err := servers.Bind(); err != nil {
		t.Fatal(err)
	}
	fc.readyURL = "http://" + servers.HTTPAddr() + "/readyz"
	r := &Router{model: fx.model, gossipTopo: fc.topo, servers: servers}
	done := make(chan struct{}, 3)
	go func() { fc.topo.run(ctx, st); done <- struct{}{} }()
	go func() { r.followReadiness(ctx); done <- struct{}{} }()
	go func() {
		if err := servers.Run(ctx); err != nil {
			t.Errorf("servers: %v", err)
		}
		done <- struct{}{}
	}()
	t.Cleanup(func() {
		cancel()
		for range 3 {
			<-done
		}
		g.Close()
	})
	sess, err := concurrency.NewSession(cli)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	fc.election = concurrency.NewElection(sess, st.Keys().Election())
	return fc
}

// joinGossip starts a gossip member id of role joined to the router's.
func (fc *failCluster) joinGossip(t *testing.T, id string, role cluster.Role) *cluster.Gossip {
	t.Helper()
	cfg := cluster.DefaultGossipConfig(id, role)
	cfg.Seeds = func() []string { return []string{fc.topo.gossip.Addr()} }
	g, err := cluster.StartGossip(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	if _, err := g.Join([]string{fc.topo.gossip.Addr()}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the router gossiping with "+id, func() error {
		if !fc.topo.gossip.Alive(id) {
			return fmt.Errorf("%s not alive in the router's gossip", id)
		}
		return nil
	})
	return g
}

// register writes n's node record with capacity bytes for expert weights
// and the shards loaded.
func (fc *failCluster) register(t *testing.T, n *expertNode, capacity int64, loaded ...placement.Shard) *cluster.Registration {
	t.Helper()
	reg, err := fc.st.Register(testContext(t), cluster.NodeRecord{
		ID: n.id, GRPCAddr: n.addr, State: cluster.StateReady,
		CapacityBytes: capacity,
		Device:        cluster.Device{Kind: "cpu"},
		Model:         cluster.ModelInfo{Shape: fc.shape, Fingerprint: failFingerprint},
		Loaded:        loaded,
	}, cluster.LeaseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	return reg
}

// leadAndPlace campaigns as the coordinator, places every expert on n
// and registers n with 1 MiB of capacity and every shard loaded: n is the
// sole holder of everything.
func (fc *failCluster) leadAndPlace(ctx context.Context, t *testing.T, n *expertNode) *cluster.Registration {
	t.Helper()
	if err := fc.election.Campaign(ctx, "coordinator-test"); err != nil {
		t.Fatal(err)
	}
	if err := fc.place(ctx, 1, n.id); err != nil {
		t.Fatal(err)
	}
	return fc.register(t, n, 1<<20, fc.everyShard()...)
}

// place writes a placement of every expert, all layers, on node, as the
// leader the test campaigned for.
func (fc *failCluster) place(ctx context.Context, version int64, node string) error {
	p := placement.Placement{Version: version, Model: fc.shape}
	for e := range fc.shape.Experts {
		p.Assignments = append(p.Assignments, placement.Assignment{Shard: fc.allLayers(e), Nodes: []string{node}})
	}
	_, rev, err := fc.st.Placement(ctx)
	if err != nil {
		return err
	}
	_, err = fc.st.WritePlacement(ctx, cluster.GuardOf(fc.election), cluster.PlacementRecord{Placement: p, Fingerprint: failFingerprint}, rev)
	return err
}

func (fc *failCluster) allLayers(expert int) placement.Shard {
	return placement.Shard{Expert: expert, First: 0, End: fc.shape.Layers}
}

func (fc *failCluster) everyShard() []placement.Shard {
	var s []placement.Shard
	for e := range fc.shape.Experts {
		s = append(s, fc.allLayers(e))
	}
	return s
}

// ready reports /readyz's answer.
func (fc *failCluster) ready() (bool, error) {
	resp, err := http.Get(fc.readyURL)
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK, nil
}

func (fc *failCluster) waitReady(t *testing.T, want bool) {
	t.Helper()
	eventually(t, fmt.Sprintf("/readyz ready=%v", want), func() error {
		if got, err := fc.ready(); err != nil || got != want {
			return fmt.Errorf("ready %v, err %v", got, err)
		}
		return nil
	})
}

func (fc *failCluster) waitLeader(t *testing.T, want bool) {
	t.Helper()
	eventually(t, fmt.Sprintf("leader=%v", want), func() error {
		fc.topo.mu.Lock()
		defer fc.topo.mu.Unlock()
		if got := fc.topo.leaderLocked(); !fc.topo.leaderKnown || got != want {
			return fmt.Errorf("known %v, leader %v", fc.topo.leaderKnown, got)
		}
		return nil
	})
}

// When the sole holder goes and nothing can re-place its experts, a step
// fails UNAVAILABLE at once naming them and why, and /readyz turns false. A
// leader gossip declares dead counts as none, though its election key
// lasts until its lease runs out.
func TestNoHolderPossibleFailsFast(t *testing.T) {
	for _, tc := range []struct {
		name   string
		leader bool
		spare  int64 // bytes of capacity of the other node, which holds nothing
		// leaderDies: the leader gossips, and leaves gossip after the
		// holder goes, its election key kept.
		leaderDies bool
		why        string
	}{
		{"no leader", false, 1 << 20, false, "no coordinator leader"},
		{"no capacity", true, 500, false, "no live node has the capacity"},
		{"leader dead in gossip", true, 1 << 20, true, "no coordinator leader"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := startFailCluster(t)
			a, b := startExpertNode(t, "a"), startExpertNode(t, "b")
			ctx := testContext(t)
			regA := fc.leadAndPlace(ctx, t, a)
			fc.register(t, b, tc.spare)
			if !tc.leader {
				if err := fc.election.Resign(ctx); err != nil {
					t.Fatal(err)
				}
			}
			var coordinatorGossip *cluster.Gossip
			if tc.leaderDies {
				coordinatorGossip = fc.joinGossip(t, "coordinator-test", cluster.RoleCoordinator)
			}
			fc.waitLeader(t, tc.leader)
			fc.waitReady(t, true)

			d := newTestDispatcher(t, DispatchConfig{WaitForHolder: 30 * time.Second}, fc.topo)
			if err := d.Forward(ctx, 0, expertBatches(1, []int{2, 5}, []int{2, 1})); err != nil {
				t.Fatalf("before the fault: %v", err)
			}
			if err := regA.Close(); err != nil {
				t.Fatal(err)
			}
			eventually(t, "a no longer a holder", func() error {
				if h := fc.topo.Holders(2, 0); len(h) > 0 {
					return fmt.Errorf("holders %v", h)
				}
				return nil
			})
			if tc.leaderDies {
				if err := coordinatorGossip.Close(); err != nil {
					t.Fatal(err)
				}
				fc.waitLeader(t, false)
			}
			start := time.Now()
			err := d.Forward(ctx, 0, expertBatches(1, []int{2, 5}, []int{2, 1}))
			elapsed := time.Since(start)
			t.Logf("failed after %v: %v", elapsed, err)
			if !errors.Is(err, ErrNoLiveReplica) || !strings.Contains(err.Error(), "experts [2 5] of layer 0") || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("got %v, want ErrNoLiveReplica naming experts [2 5] of layer 0 and %q", err, tc.why)
			}
			if elapsed > time.Second {
				t.Errorf("failed after %v, want under 1 s", elapsed)
			}
			if got, err := fc.ready(); err != nil || got {
				t.Errorf("/readyz ready %v (err %v) with no holder, want false", got, err)
			}
		})
	}
}

// With a leader and a node with room, a step waits for the re-placement
// and completes on the new holder; losing the leader while it waits fails it
// at once.
func TestNoHolderWaitsForReplacement(t *testing.T) {
	for _, tc := range []struct {
		name    string
		replace bool // re-place on b; otherwise the leader resigns
	}{
		{"re-placed", true},
		{"leader lost while waiting", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := startFailCluster(t)
			a, b := startExpertNode(t, "a"), startExpertNode(t, "b")
			ctx := testContext(t)
			regA := fc.leadAndPlace(ctx, t, a)
			regB := fc.register(t, b, 1<<20)
			fc.waitLeader(t, true)
			fc.waitReady(t, true)
			if err := regA.Close(); err != nil {
				t.Fatal(err)
			}
			fc.waitReady(t, false)

			const delay = 300 * time.Millisecond
			changed := make(chan error, 1)
			go func() {
				time.Sleep(delay)
				if !tc.replace {
					changed <- fc.election.Resign(ctx)
					return
				}
				if err := fc.place(ctx, 2, "b"); err != nil {
					changed <- err
					return
				}
				changed <- regB.Update(ctx, func(r *cluster.NodeRecord) { r.Loaded = fc.everyShard() })
			}()
			d := newTestDispatcher(t, DispatchConfig{WaitForHolder: 30 * time.Second}, fc.topo)
			batches := expertBatches(3, []int{1, 5}, []int{3, 2})
			start := time.Now()
			err := d.Forward(ctx, 0, batches)
			elapsed := time.Since(start)
			if cerr := <-changed; cerr != nil {
				t.Fatal(cerr)
			}
			t.Logf("Forward returned after %v: %v", elapsed, err)
			if elapsed < delay {
				t.Errorf("returned after %v, before the change at %v: it did not wait", elapsed, delay)
			}
			if elapsed > delay+time.Second {
				t.Errorf("returned after %v, more than 1 s after the change", elapsed)
			}
			if tc.replace {
				if err != nil {
					t.Fatal(err)
				}
				if err := sameBits(inProcess(t, 0, batches), outputs(batches)); err != nil {
					t.Errorf("outputs differ from in-process: %v", err)
				}
				fc.waitReady(t, true)
				return
			}
			if !errors.Is(err, ErrNoLiveReplica) || !strings.Contains(err.Error(), "no coordinator leader") {
				t.Fatalf("got %v, want ErrNoLiveReplica: no coordinator leader", err)
			}
		})
	}
}

// While etcd is unreachable what the router knows of the leader and the
// nodes is stale: a step waits for a holder as before, bounded by
// WaitForHolder, rather than failing on a stale verdict.
func TestNoHolderEtcdUnreachableWaits(t *testing.T) {
	fc := startFailCluster(t)
	a := startExpertNode(t, "a")
	ctx := testContext(t)
	regA := fc.leadAndPlace(ctx, t, a)
	if err := fc.election.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	fc.waitLeader(t, false)
	if err := regA.Close(); err != nil {
		t.Fatal(err)
	}
	const wait = time.Second
	d := newTestDispatcher(t, DispatchConfig{WaitForHolder: wait}, fc.topo)
	batches := expertBatches(1, []int{3}, []int{2})
	eventually(t, "a fast failure with etcd up", func() error {
		if err := d.Forward(ctx, 0, batches); err == nil || !strings.Contains(err.Error(), "cannot get one") {
			return fmt.Errorf("got %v", err)
		}
		return nil
	})

	fc.etcd.Partition()
	t.Cleanup(fc.etcd.Heal) // before the registrations close
	eventually(t, "the etcd connection down", func() error {
		fc.topo.mu.Lock()
		defer fc.topo.mu.Unlock()
		if fc.topo.etcdUp() {
			return errors.New("still connected")
		}
		return nil
	})
	start := time.Now()
	err := d.Forward(ctx, 0, batches)
	elapsed := time.Since(start)
	t.Logf("failed after %v: %v", elapsed, err)
	if !errors.Is(err, ErrNoLiveReplica) || !strings.Contains(err.Error(), "after 1s") {
		t.Fatalf("got %v, want ErrNoLiveReplica after the 1 s wait", err)
	}
	if elapsed < wait {
		t.Errorf("failed after %v, before the %v wait bound", elapsed, wait)
	}
}

// When the connection to the sole holder of the experts breaks (its
// process killed: gossip, here absent, would take seconds to tell),
// /readyz turns false within a second, and true again once the node is
// back at its address, with no call to redial it.
func TestLostHolderUnready(t *testing.T) {
	fc := startFailCluster(t)
	a := startExpertNode(t, "a")
	ctx := testContext(t)
	fc.leadAndPlace(ctx, t, a)
	fc.waitReady(t, true)
	d := newTestDispatcher(t, DispatchConfig{Reachable: fc.topo.setReachable}, fc.topo)
	if err := d.Forward(ctx, 0, expertBatches(1, []int{2, 5}, []int{2, 1})); err != nil {
		t.Fatalf("before the fault: %v", err)
	}

	a.stop()
	start := time.Now()
	fc.waitReady(t, false)
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Errorf("/readyz false %v after the holder's connection broke, want within 1 s", elapsed)
	} else {
		t.Logf("/readyz false %v after the holder's connection broke", elapsed)
	}
	if h := fc.topo.Holders(2, 0); len(h) != 1 {
		t.Errorf("holders %v, want a still placed and registered", h)
	}

	startExpertNodeAt(t, "a", a.addr)
	fc.waitReady(t, true)
	if err := d.Forward(ctx, 0, expertBatches(2, []int{2, 5}, []int{2, 1})); err != nil {
		t.Errorf("after the holder came back: %v", err)
	}
}
