package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/moegrid/moegrid/coordinator"
	"github.com/moegrid/moegrid/internal/pki"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
	"github.com/moegrid/moegrid/router"
)

// TestStatusShowsEjectedNode cuts one expert node's gRPC traffic while its
// process, gossip and etcd registration live on (a gray failure): the
// router ejects it and the coordinator's Status says so, in the table and
// the JSON. Once the traffic flows again and a probe call succeeds, the
// node is ready again.
func TestStatusShowsEjectedNode(t *testing.T) {
	tc := startCluster(t, clusterOptions{nodes: 2, minReplicas: 2, gated: "expert-0",
		tuneRouter: func(c *router.Config) { c.LoadReport = 100 * time.Millisecond }})
	awaitReady(t, "coordinator", tc.coordinator.Ready(), 60*time.Second)
	cc, err := grpc.NewClient(tc.coordinator.GRPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(tc.pki.ClientTLS(t, pki.RoleAdmin, "admin"))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	cl := moegridv1.NewClusterClient(cc)
	if _, err := tc.generate(t.Context(), prompts[0], 4); err != nil {
		t.Fatalf("before the fault: %v", err)
	}

	tc.gate.cut(true)
	// The replica answers instead, so the generation succeeds; the
	// failures it met eject the node.
	if _, err := tc.generate(t.Context(), prompts[1], 8); err != nil {
		t.Fatalf("with expert-0 cut off: %v", err)
	}
	st := awaitRouterView(t, cl, "expert-0", func(v *moegridv1.RouterView) error {
		if v.GetState() != "ejected" || v.GetRouters() != 1 || v.GetSince() == nil || v.GetLastError() == "" {
			return fmt.Errorf("router view %v, want ejected by 1 router with since and last error", v)
		}
		return nil
	})
	var table, js bytes.Buffer
	if err := coordinator.WriteStatusTable(&table, st, time.Now()); err != nil {
		t.Fatal(err)
	}
	if row := nodeRow(table.String(), "expert-0"); !strings.Contains(row, "ejected (1 router)") {
		t.Errorf("expert-0's row %q does not say ejected:\n%s", row, table.String())
	}
	if row := nodeRow(table.String(), "expert-1"); !strings.Contains(row, " ready ") {
		t.Errorf("expert-1's row %q is not ready:\n%s", row, table.String())
	}
	if err := coordinator.WriteStatusJSON(&js, st); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(js.String(), `"state": "ejected"`) {
		t.Errorf("the JSON status has no ejected router view:\n%s", js.String())
	}

	tc.gate.cut(false)
	// Requests keep coming; after the backoff one probes the node, and
	// its success restores it.
	awaitRouterView(t, cl, "expert-0", func(v *moegridv1.RouterView) error {
		if _, err := tc.generate(t.Context(), prompts[2], 2); err != nil {
			return fmt.Errorf("generate: %w", err)
		}
		if v != nil {
			return fmt.Errorf("router view %v, want none", v)
		}
		return nil
	})
}

// awaitRouterView polls the coordinator's Status until check accepts node's
// router view, and returns that Status.
func awaitRouterView(t *testing.T, cl moegridv1.ClusterClient, node string, check func(*moegridv1.RouterView) error) *moegridv1.StatusResponse {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := cl.Status(t.Context(), &moegridv1.StatusRequest{})
		if err == nil {
			err = errors.New("no such node")
			for _, n := range st.GetNodes() {
				if n.GetId() == node {
					if err = check(n.GetRouterView()); err == nil {
						return st
					}
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", node, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// nodeRow is node's row of a status table.
func nodeRow(table, node string) string {
	for line := range strings.Lines(table) {
		if strings.HasPrefix(line, node+" ") {
			return line
		}
	}
	return ""
}

// tcpGate forwards TCP connections to a target until it is cut: then it
// drops every connection and refuses new ones, as a node whose network
// fails while the process lives on.
type tcpGate struct {
	ln net.Listener
	wg sync.WaitGroup

	// mu protects the fields below.
	mu     sync.Mutex
	target string
	closed bool
	conns  map[net.Conn]bool
}

func startGate(t testing.TB) *tcpGate {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &tcpGate{ln: ln, conns: map[net.Conn]bool{}}
	g.wg.Add(1)
	go g.serve()
	t.Cleanup(g.close)
	return g
}

func (g *tcpGate) Addr() string { return g.ln.Addr().String() }

func (g *tcpGate) setTarget(addr string) {
	g.mu.Lock()
	g.target = addr
	g.mu.Unlock()
}

// cut drops the connections and refuses new ones while on.
func (g *tcpGate) cut(on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = on
	if on {
		g.dropLocked()
	}
}

func (g *tcpGate) dropLocked() {
	for c := range g.conns {
		c.Close()
		delete(g.conns, c)
	}
}

func (g *tcpGate) serve() {
	defer g.wg.Done()
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return
		}
		g.mu.Lock()
		target, closed := g.target, g.closed
		g.mu.Unlock()
		if closed || target == "" {
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			continue
		}
		g.mu.Lock()
		if g.closed {
			g.mu.Unlock()
			c.Close()
			up.Close()
			continue
		}
		g.conns[c], g.conns[up] = true, true
		g.mu.Unlock()
		g.wg.Add(2)
		go g.pipe(c, up)
		go g.pipe(up, c)
	}
}

// pipe copies src to dst, then closes both.
func (g *tcpGate) pipe(dst, src net.Conn) {
	defer g.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
}

func (g *tcpGate) close() {
	g.ln.Close()
	g.mu.Lock()
	g.dropLocked()
	g.mu.Unlock()
	g.wg.Wait()
}
