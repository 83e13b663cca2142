package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/coordinator/placement"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func statusOf(t *testing.T, cli moegridv1.ClusterClient) *moegridv1.StatusResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	resp, err := cli.Status(ctx, &moegridv1.StatusRequest{})
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	return resp
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func ids(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("n%d", i+1))
	}
	return out
}

// TestPlacesNodes: 8 nodes that each hold one expert get one expert each;
// Status, health, reflection and the HTTP endpoints answer on real
// listeners; a drain that leaves too little memory keeps the placement and
// reports the error until a new node makes room.
func TestPlacesNodes(t *testing.T) {
	e := newEnv(t)
	c := e.start(e.config("coord-a"))
	regs := map[string]*cluster.Registration{}
	for _, id := range ids(8) {
		regs[id] = e.register(id, expertBytes)
	}
	p := e.waitPlacement(10*time.Second, "8 nodes placed", placedOn(ids(8)...))
	experts := map[int]bool{}
	for _, id := range ids(8) {
		shards := p.ShardsOf(id)
		if len(shards) != 1 || shards[0].First != 0 || shards[0].End != testModel.Layers {
			t.Fatalf("%s holds %v, want one whole expert", id, shards)
		}
		experts[shards[0].Expert] = true
	}
	if len(experts) != 8 || p.Leader != "coord-a" || p.Fingerprint != testFP {
		t.Fatalf("experts %v leader %q fingerprint %q", experts, p.Leader, p.Fingerprint)
	}

	conn := dial(t, c.GRPCAddr())
	cli := moegridv1.NewClusterClient(conn)
	// n1 reports its shard loaded.
	if err := regs["n1"].Update(t.Context(), func(r *cluster.NodeRecord) {
		r.State = cluster.StateReady
		r.Loaded = p.ShardsOf("n1")
		r.Load = cluster.NodeLoad{RowsTotal: 10, RowsPerSecond: 2.5}
	}); err != nil {
		t.Fatal(err)
	}
	st := statusOf(t, cli)
	if st.Leader != "coord-a" || st.PlacementVersion != p.Version || st.PlacementError != "" || len(st.Nodes) != 8 || len(st.Shards) != 8 {
		t.Fatalf("status: leader %q v%d err %q nodes %d shards %d", st.Leader, st.PlacementVersion, st.PlacementError, len(st.Nodes), len(st.Shards))
	}
	if m := st.Model; m.Experts != 8 || m.Layers != 4 || m.BytesPerExpertLayer != 1000 {
		t.Errorf("model %v", m)
	}
	n1 := st.Nodes[0]
	if n1.Id != "n1" || n1.State != "ready" || !n1.Alive || n1.MemoryUsedBytes != expertBytes || n1.MemoryCapacityBytes != expertBytes ||
		len(n1.Assigned) != 1 || len(n1.Loaded) != 1 || n1.Load.RowsPerSecond != 2.5 || n1.LastHeartbeat == nil || n1.Device != "cpu (test)" {
		t.Errorf("n1 status %v", n1)
	}
	for _, s := range st.Shards {
		want := []string(nil)
		if slices.Contains(s.Nodes, "n1") {
			want = []string{"n1"}
		}
		if !slices.Equal(s.LoadedOn, want) {
			t.Errorf("shard %v loaded on %v, want %v", s.Shard, s.LoadedOn, want)
		}
	}

	// Health and reflection on the same server.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "moegrid.v1.Cluster"})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health = %v, %v", h, err)
	}
	rs, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
	rr, err := rs.Recv()
	if err != nil || !strings.Contains(rr.String(), "moegrid.v1.Cluster") {
		t.Errorf("reflection = %v, %v", rr, err)
	}
	rs.CloseSend()

	base := "http://" + c.HTTPAddr()
	if code, _ := httpGet(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz %d", code)
	}
	if code, _ := httpGet(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz %d", code)
	}
	eventually(t, 5*time.Second, "metrics", func() error {
		_, body := httpGet(t, base+"/metrics")
		for _, want := range []string{
			"moegrid_coordinator_leader 1",
			fmt.Sprintf("moegrid_coordinator_placement_version %d", p.Version),
			`moegrid_coordinator_placement_writes_total{result="ok"}`,
			`moegrid_coordinator_reconcile_total{result="written"}`,
			`moegrid_coordinator_nodes{state="joining"} 7`,
			`moegrid_coordinator_nodes{state="ready"} 1`,
			`grpc_server_handled_total{grpc_code="OK",grpc_method="Status"`,
		} {
			if !strings.Contains(body, want) {
				return fmt.Errorf("/metrics lacks %q", want)
			}
		}
		return nil
	})

	// Drain errors.
	for _, tc := range []struct {
		id   string
		code codes.Code
	}{{"", codes.InvalidArgument}, {"no such/node", codes.InvalidArgument}, {"n99", codes.NotFound}} {
		_, err := cli.Drain(ctx, &moegridv1.DrainRequest{NodeId: tc.id})
		if status.Code(err) != tc.code {
			t.Errorf("Drain(%q) = %v, want %v", tc.id, err, tc.code)
		}
	}
	// Draining n8 leaves 7 experts' worth of memory for 8 experts: the
	// placement stays and says why.
	if _, err := cli.Drain(ctx, &moegridv1.DrainRequest{NodeId: "n8"}); err != nil {
		t.Fatal(err)
	}
	e.waitPlacement(10*time.Second, "capacity error", func(r cluster.PlacementRecord) error {
		if !strings.Contains(r.Error, "insufficient capacity") || r.Version != p.Version {
			return fmt.Errorf("v%d error %q", r.Version, r.Error)
		}
		return nil
	})
	st = statusOf(t, cli)
	if !strings.Contains(st.PlacementError, "insufficient capacity") || st.Nodes[7].State != "draining" {
		t.Errorf("status error %q, n8 %v", st.PlacementError, st.Nodes[7])
	}
	// A ninth node makes room: n8's expert moves there alone.
	e.register("n9", expertBytes)
	want := append(ids(7), "n9")
	p2 := e.waitPlacement(10*time.Second, "n8 replaced by n9", placedOn(want...))
	if p2.Error != "" || p2.Version != p.Version+1 || placement.Moves(p.Placement, p2.Placement) != 1 {
		t.Errorf("v%d error %q moves %d", p2.Version, p2.Error, placement.Moves(p.Placement, p2.Placement))
	}
	if got := p2.ShardsOf("n9"); len(got) != 1 || got[0] != p.ShardsOf("n8")[0] {
		t.Errorf("n9 holds %v, n8 held %v", got, p.ShardsOf("n8"))
	}
}

// TestNodeProcessKilled kills a node process with SIGKILL: its shards are
// re-placed within the lease TTL plus a few seconds, and with gossip well
// before its lease (here 30 s) expires.
func TestNodeProcessKilled(t *testing.T) {
	for _, tc := range []struct {
		name   string
		gossip bool
		ttl    time.Duration
		within time.Duration
	}{
		{"lease", false, 2 * time.Second, 2*time.Second + 4*time.Second},
		{"gossip", true, 30 * time.Second, 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			cfg := e.config("coord")
			cfg.GossipDisabled = !tc.gossip
			c := e.start(cfg)
			var children []*child
			for _, id := range ids(3) {
				env := []string{"MOEGRID_TEST_ID=" + id, "MOEGRID_TEST_TTL=" + tc.ttl.String(), fmt.Sprintf("MOEGRID_TEST_CAPACITY=%d", 4*expertBytes)}
				if tc.gossip {
					env = append(env, "MOEGRID_TEST_GOSSIP_JOIN="+c.GossipAddr())
				}
				children = append(children, e.startChild("node", env...))
			}
			e.waitPlacement(10*time.Second, "3 nodes placed", placedOn(ids(3)...))
			if tc.gossip {
				eventually(t, 5*time.Second, "gossip sees the nodes", func() error {
					for _, id := range ids(3) {
						if !c.gossip.Alive(id) {
							return fmt.Errorf("%s not alive", id)
						}
					}
					return nil
				})
			}
			start := time.Now()
			children[1].kill()
			e.waitPlacement(tc.within, "n2's shards re-placed", placedOn("n1", "n3"))
			took := time.Since(start)
			t.Logf("re-placed %v after SIGKILL", took)
			if tc.gossip {
				// The record is still there: gossip, not the lease, did it.
				nodes, err := e.store.Nodes(t.Context())
				if err != nil || len(nodes) != 3 {
					t.Errorf("nodes %v, %v: want n2's record alive under its lease", nodes, err)
				}
				st := statusOf(t, moegridv1.NewClusterClient(dial(t, c.GRPCAddr())))
				if n2 := st.Nodes[1]; n2.Id != "n2" || n2.Alive || len(n2.Assigned) != 0 {
					t.Errorf("n2 status %v: want dead with no shards", n2)
				}
			}
		})
	}
}

// TestLeaderFailover kills the leading replica's process: the other takes
// over within the election TTL plus a few seconds and keeps placing; then a
// replica that stops cleanly hands over at once.
func TestLeaderFailover(t *testing.T) {
	e := newEnv(t)
	e.register("n1", 8*expertBytes)
	a := e.startChild("coordinator", "MOEGRID_TEST_ID=coord-a")
	e.waitPlacement(10*time.Second, "coord-a places", func(p cluster.PlacementRecord) error {
		if p.Leader != "coord-a" {
			return fmt.Errorf("leader %q", p.Leader)
		}
		return placedOn("n1")(p)
	})
	b := e.start(e.config("coord-b"))
	cliB := moegridv1.NewClusterClient(dial(t, b.GRPCAddr()))
	if st := statusOf(t, cliB); st.Leader != "coord-a" || b.IsLeader() {
		t.Fatalf("follower sees leader %q (itself leader: %v)", st.Leader, b.IsLeader())
	}
	// The follower serves Status from etcd just the same.
	if st := statusOf(t, moegridv1.NewClusterClient(dial(t, a.Ready))); st.PlacementVersion != statusOf(t, cliB).PlacementVersion {
		t.Errorf("replicas disagree on the version")
	}

	start := time.Now()
	a.kill()
	eventually(t, 2*time.Second+4*time.Second, "coord-b takes over", func() error {
		if !b.IsLeader() {
			return errors.New("not leader")
		}
		return nil
	})
	t.Logf("took over %v after SIGKILL", time.Since(start))
	e.register("n2", 8*expertBytes)
	e.waitPlacement(10*time.Second, "coord-b places", func(p cluster.PlacementRecord) error {
		if p.Leader != "coord-b" {
			return fmt.Errorf("leader %q", p.Leader)
		}
		return placedOn("n1", "n2")(p)
	})
	if st := statusOf(t, cliB); st.Leader != "coord-b" {
		t.Errorf("status leader %q", st.Leader)
	}

	c := e.start(e.config("coord-c"))
	start = time.Now()
	if err := b.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	eventually(t, 3*time.Second, "coord-c takes over", func() error {
		if !c.IsLeader() {
			return errors.New("not leader")
		}
		return nil
	})
	t.Logf("clean handover in %v", time.Since(start))
}

// TestEtcdRestart stops etcd for longer than every lease and starts it again
// on the same data: registrations, watches and the coordinator come back
// and placing goes on.
func TestEtcdRestart(t *testing.T) {
	e := newEnv(t)
	c := e.start(e.config("coord"))
	e.register("n1", 8*expertBytes)
	e.register("n2", 8*expertBytes)
	p := e.waitPlacement(10*time.Second, "placed", placedOn("n1", "n2"))
	wctx, wcancel := context.WithCancel(t.Context())
	defer wcancel()
	watch := e.store.WatchPlacement(wctx)

	e.etcd.Stop()
	time.Sleep(3 * time.Second)
	e.etcd.Resume()
	e.register("n3", 8*expertBytes)
	p2 := e.waitPlacement(15*time.Second, "n3 placed after restart", placedOn("n1", "n2", "n3"))
	if p2.Version <= p.Version {
		t.Fatalf("version %d after %d", p2.Version, p.Version)
	}
	deadline := time.After(10 * time.Second)
	for got := false; !got; {
		select {
		case w := <-watch:
			got = w.Version >= p2.Version
		case <-deadline:
			t.Fatalf("watch did not deliver v%d", p2.Version)
		}
	}
	// The old leases are gone by now; the nodes registered again.
	time.Sleep(2 * time.Second)
	e.waitPlacement(5*time.Second, "still placed", placedOn("n1", "n2", "n3"))
	eventually(t, 10*time.Second, "leader again", func() error {
		if !c.IsLeader() {
			return errors.New("not leader")
		}
		return nil
	})
}

// TestBadInput: a malformed node record is skipped with its key in the log;
// a prefix holding foreign data stops the replica with a clear error.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	cli := e.etcd.Client(t)
	if _, err := cli.Put(t.Context(), e.store.Keys().Node("broken"), `{"id":"broken","capacity_bytes":"lots"}`); err != nil {
		t.Fatal(err)
	}
	c := e.start(e.config("coord"))
	e.register("n1", 8*expertBytes)
	e.waitPlacement(10*time.Second, "good node placed", placedOn("n1"))
	if logs := e.logs.String(); !strings.Contains(logs, "skipping malformed record") || !strings.Contains(logs, e.store.Keys().Node("broken")) {
		t.Errorf("malformed record not logged with its key:\n%s", logs)
	}
	st := statusOf(t, moegridv1.NewClusterClient(dial(t, c.GRPCAddr())))
	if len(st.Nodes) != 1 {
		t.Errorf("status nodes %v", st.Nodes)
	}

	if _, err := cli.Put(t.Context(), "/foreign/app/config", "x"); err != nil {
		t.Fatal(err)
	}
	cfg := e.config("coord-2")
	cfg.Prefix = "/foreign/"
	bad, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	err = bad.Run(ctx)
	if !errors.Is(err, cluster.ErrForeignPrefix) || !strings.Contains(err.Error(), "/foreign/app/config") {
		t.Fatalf("Run on a foreign prefix = %v", err)
	}
}

// TestDeposedLeaderCannotWrite: a replica whose term ended (its election
// lease expired while it was cut off) reconciles with its old guard; the
// write is refused and nothing is written.
func TestDeposedLeaderCannotWrite(t *testing.T) {
	e := newEnv(t)
	e.register("n1", 8*expertBytes)
	cli := e.etcd.Client(t)
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(1))
	if err != nil {
		t.Fatal(err)
	}
	el := concurrency.NewElection(sess, e.store.Keys().Election())
	if err := el.Campaign(t.Context(), "old"); err != nil {
		t.Fatal(err)
	}
	guard := cluster.GuardOf(el)
	sess.Orphan()
	if _, err := cli.Revoke(t.Context(), sess.Lease()); err != nil {
		t.Fatal(err)
	}
	c, err := New(e.config("old"), e.log, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.reconcile(t.Context(), e.store, guard); !errors.Is(err, cluster.ErrNotLeader) {
		t.Fatalf("reconcile with a dead term = %v, want ErrNotLeader", err)
	}
	var m dto.Metric
	if err := c.metrics.writes.WithLabelValues("not_leader").Write(&m); err != nil || m.GetCounter().GetValue() != 1 {
		t.Errorf("not_leader writes = %v (%v)", m.GetCounter().GetValue(), err)
	}
	if p, _, err := e.store.Placement(t.Context()); err != nil || p.Version != 0 {
		t.Errorf("placement v%d written (%v)", p.Version, err)
	}
}
