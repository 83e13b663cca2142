package coordinator

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/cluster/etcdtest"
	"github.com/moegrid/moegrid/coordinator/placement"
)

// The test binary doubles as the processes whose death the tests cause:
// with MOEGRID_TEST_CHILD set it runs that child instead of the tests.
const childEnv = "MOEGRID_TEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "node":
		os.Exit(childNode())
	case "coordinator":
		os.Exit(childCoordinator())
	}
	goleak.VerifyTestMain(m)
}

const testFP = "sha256:test"

// testModel has 8 experts of 4 layers of 1000 bytes: an expert is 4000 bytes.
var testModel = placement.Model{Experts: 8, Layers: 4, BytesPerExpertLayer: 1000}

const expertBytes = 4000

func nodeRecord(id string, capacity int64) cluster.NodeRecord {
	return cluster.NodeRecord{
		ID:            id,
		GRPCAddr:      "127.0.0.1:9",
		State:         cluster.StateJoining,
		CapacityBytes: capacity,
		Device:        cluster.Device{Kind: "cpu", Name: "test"},
		Model:         cluster.ModelInfo{Shape: testModel, Fingerprint: testFP},
		Started:       time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

// fastGossip sets gossip timings that detect a crash within about a second
// on loopback.
func fastGossip(g *cluster.GossipConfig) {
	g.ProbeInterval = 100 * time.Millisecond
	g.ProbeTimeout = 50 * time.Millisecond
	g.SuspicionMult = 2
	g.GossipInterval = 50 * time.Millisecond
	g.RejoinInterval = 200 * time.Millisecond
	g.MetaInterval = 200 * time.Millisecond
}

// childNode registers a node (and gossips if asked) and blocks until killed.
func childNode() int {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	cli, err := cluster.NewEtcdClient(strings.Split(os.Getenv("MOEGRID_TEST_ETCD"), ","))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	st, err := cluster.Open(ctx, cli, os.Getenv("MOEGRID_TEST_PREFIX"), log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	id := os.Getenv("MOEGRID_TEST_ID")
	capacity, _ := strconv.ParseInt(os.Getenv("MOEGRID_TEST_CAPACITY"), 10, 64)
	ttl, _ := time.ParseDuration(os.Getenv("MOEGRID_TEST_TTL"))
	rec := nodeRecord(id, capacity)
	if join, ok := os.LookupEnv("MOEGRID_TEST_GOSSIP_JOIN"); ok {
		gcfg := cluster.DefaultGossipConfig(id, cluster.RoleNode)
		fastGossip(&gcfg)
		gcfg.Join = strings.Split(join, ",")
		g, err := cluster.StartGossip(gcfg, log)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		rec.GossipAddr = g.Addr()
	}
	if _, err := st.Register(ctx, rec, cluster.LeaseOptions{TTL: ttl, Refresh: 500 * time.Millisecond}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Printf("READY %s\n", rec.GossipAddr)
	select {}
}

// childCoordinator runs a coordinator replica until killed.
func childCoordinator() int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	cfg := testConfig(os.Getenv("MOEGRID_TEST_ID"), strings.Split(os.Getenv("MOEGRID_TEST_ETCD"), ","), os.Getenv("MOEGRID_TEST_PREFIX"))
	c, err := New(cfg, log, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	go func() {
		<-c.Ready()
		fmt.Printf("READY %s\n", c.GRPCAddr())
	}()
	if err := c.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// testConfig is a replica with short timings on loopback, gossip off, in
// plaintext: TestTLS and the integration tests cover its TLS.
func testConfig(id string, endpoints []string, prefix string) Config {
	cfg := DefaultConfig()
	cfg.Security.Insecure = true
	cfg.ID = id
	cfg.EtcdEndpoints = endpoints
	cfg.Prefix = prefix
	cfg.GRPCAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.GossipDisabled = true
	fastGossip(&cfg.Gossip)
	cfg.LeaseTTL = 2 * time.Second
	cfg.ResyncInterval = time.Second
	cfg.Debounce = 20 * time.Millisecond
	cfg.ShutdownTimeout = 2 * time.Second
	return cfg
}

// env is one test's etcd and cluster prefix.
type env struct {
	t      *testing.T
	etcd   *etcdtest.Server
	prefix string
	store  *cluster.Store
	logs   *logBuffer
	log    *slog.Logger
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, etcd: etcdtest.Start(t), prefix: "/test/" + strings.ReplaceAll(t.Name(), "/", "-") + "/"}
	e.log, e.logs = testLogger(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", e.logs)
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	st, err := cluster.Open(ctx, e.etcd.Client(t), e.prefix, e.log)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	e.store = st
	return e
}

func (e *env) config(id string) Config { return testConfig(id, e.etcd.Endpoints(), e.prefix) }

// running is an in-process replica.
type running struct {
	*Coordinator
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// stop cancels the replica and waits for Run to return; idempotent.
func (r *running) stop() error {
	r.cancel()
	<-r.done
	return r.err
}

// start runs a replica in-process until the test ends.
func (e *env) start(cfg Config) *running {
	e.t.Helper()
	c, err := New(cfg, e.log, nil)
	if err != nil {
		e.t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(e.t.Context()))
	r := &running{Coordinator: c, cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = c.Run(ctx)
		close(r.done)
	}()
	e.t.Cleanup(func() { r.stop() })
	select {
	case <-c.Ready():
	case <-r.done:
		e.t.Fatalf("Run: %v", r.err)
	case <-time.After(10 * time.Second):
		e.t.Fatalf("replica not ready")
	}
	eventually(e.t, 10*time.Second, "replica connected to etcd", func() error {
		if c.store.Load() == nil {
			return errNotConnected
		}
		return nil
	})
	return r
}

// register registers an in-process node until the test ends.
func (e *env) register(id string, capacity int64, mut ...func(*cluster.NodeRecord)) *cluster.Registration {
	e.t.Helper()
	rec := nodeRecord(id, capacity)
	for _, m := range mut {
		m(&rec)
	}
	ctx, cancel := context.WithTimeout(e.t.Context(), 15*time.Second)
	defer cancel()
	reg, err := e.store.Register(ctx, rec, cluster.LeaseOptions{TTL: 2 * time.Second, Refresh: 500 * time.Millisecond})
	if err != nil {
		e.t.Fatalf("Register %s: %v", id, err)
	}
	e.t.Cleanup(func() { reg.Close() })
	return reg
}

// waitPlacement polls the placement until check accepts it.
func (e *env) waitPlacement(timeout time.Duration, what string, check func(cluster.PlacementRecord) error) cluster.PlacementRecord {
	e.t.Helper()
	var got cluster.PlacementRecord
	eventually(e.t, timeout, what, func() error {
		ctx, cancel := context.WithTimeout(e.t.Context(), time.Second)
		defer cancel()
		p, _, err := e.store.Placement(ctx)
		if err != nil {
			return err
		}
		got = p
		return check(p)
	})
	return got
}

// placedOn checks that the placement puts shards on exactly the given nodes.
func placedOn(ids ...string) func(cluster.PlacementRecord) error {
	return func(p cluster.PlacementRecord) error {
		if p.Version == 0 {
			return fmt.Errorf("no placement yet (error %q)", p.Error)
		}
		got := p.Nodes()
		if strings.Join(got, ",") != strings.Join(ids, ",") {
			return fmt.Errorf("v%d on %v, want %v (error %q)", p.Version, got, ids, p.Error)
		}
		return nil
	}
}

// child is a test binary re-executed as a node or a replica.
type child struct {
	t      *testing.T
	cmd    *exec.Cmd
	stderr *logBuffer
	// Ready is the text after READY on the child's first line.
	Ready string
}

func (e *env) startChild(mode string, env ...string) *child {
	e.t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode,
		"MOEGRID_TEST_ETCD="+strings.Join(e.etcd.Endpoints(), ","), "MOEGRID_TEST_PREFIX="+e.prefix)
	cmd.Env = append(cmd.Env, env...)
	c := &child{t: e.t, cmd: cmd, stderr: &logBuffer{}}
	cmd.Stderr = c.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		c.kill()
		if e.t.Failed() {
			e.t.Logf("child %s stderr:\n%s", mode, c.stderr)
		}
	})
	line := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(out)
		if s.Scan() {
			line <- s.Text()
		}
		close(line)
		io.Copy(io.Discard, out)
	}()
	select {
	case l, ok := <-line:
		if !ok || !strings.HasPrefix(l, "READY") {
			e.t.Fatalf("child %s did not start: %q\n%s", mode, l, c.stderr)
		}
		c.Ready = strings.TrimSpace(strings.TrimPrefix(l, "READY"))
	case <-time.After(20 * time.Second):
		e.t.Fatalf("child %s not ready\n%s", mode, c.stderr)
	}
	return c
}

// kill sends SIGKILL (no cleanup of any kind in the child) and reaps it.
func (c *child) kill() {
	if c.cmd.ProcessState != nil {
		return
	}
	c.cmd.Process.Kill()
	c.cmd.Wait()
}

// logBuffer collects log output; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func testLogger(t *testing.T) (*slog.Logger, *logBuffer) {
	buf := &logBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// eventually polls cond every 50 ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("%s: %v", what, t.Context().Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

var grpcInfo = grpc.UnaryServerInfo{FullMethod: "/moegrid.v1.Cluster/Test"}

func testLoggerDiscard() *slog.Logger { return slog.New(slog.DiscardHandler) }
