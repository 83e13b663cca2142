package serve

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// start listens with cfg on loopback, lets register add handlers, and runs
// the servers until the test ends.
func start(t *testing.T, cfg Config, register func(*http.ServeMux)) *Servers {
	t.Helper()
	cfg.GRPCAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	s, err := newBound(cfg, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if register != nil {
		register(s.Mux)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	s.SetReady(true)
	return s
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedWithin reports whether the server closes c (a read ends in EOF or
// an error other than our deadline) within d, discarding what it sends.
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true
}

// TestSlowHeadersDisconnected is slowloris: clients that send a header line
// now and then, never finishing the request, are cut off after
// HeaderTimeout however they trickle.
func TestSlowHeadersDisconnected(t *testing.T) {
	s := start(t, Config{HeaderTimeout: 300 * time.Millisecond}, nil)
	const n = 50
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = dial(t, s.HTTPAddr())
		fmt.Fprintf(conns[i], "GET /healthz HTTP/1.1\r\nHost: x\r\n")
	}
	t0 := time.Now()
	for range 5 {
		time.Sleep(100 * time.Millisecond)
		for _, c := range conns {
			fmt.Fprintf(c, "X-Slow: a\r\n")
		}
	}
	for i, c := range conns {
		if !closedWithin(c, 5*time.Second) {
			t.Fatalf("connection %d still open %v after it started trickling headers", i, time.Since(t0))
		}
	}
}

// TestTrickledBodiesDisconnected: 2000 clients send their headers at once
// and then a byte of their body now and then. Every one is cut off after
// BodyTimeout, and the server's goroutines go back to what they were.
func TestTrickledBodiesDisconnected(t *testing.T) {
	s := start(t, Config{BodyTimeout: 500 * time.Millisecond}, func(mux *http.ServeMux) {
		mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
			if _, err := io.ReadAll(r.Body); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
			}
		})
	})
	// Let the servers' own goroutines start before counting.
	time.Sleep(100 * time.Millisecond)
	before := runtime.NumGoroutine()
	const n = 2000
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = dial(t, s.HTTPAddr())
		fmt.Fprintf(conns[i], "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
	}
	t0 := time.Now()
	open := n
	for open > 0 && time.Since(t0) < 20*time.Second {
		time.Sleep(100 * time.Millisecond)
		open = 0
		for _, c := range conns {
			c.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
			if _, err := c.Write([]byte("x")); err == nil {
				open++
			}
		}
	}
	for i, c := range conns {
		if !closedWithin(c, 5*time.Second) {
			t.Fatalf("connection %d still open %v after it started trickling its body", i, time.Since(t0))
		}
	}
	t.Logf("%d trickling connections all closed after %v", n, time.Since(t0).Round(time.Millisecond))
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before+10 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left, %d before the connections", runtime.NumGoroutine(), before)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestStreamOutlivesBodyTimeout: a response streamed for longer than
// BodyTimeout, after the body was read, is not cut off (http.Server's
// ReadTimeout would cancel its context).
func TestStreamOutlivesBodyTimeout(t *testing.T) {
	s := start(t, Config{BodyTimeout: 200 * time.Millisecond}, func(mux *http.ServeMux) {
		mux.HandleFunc("POST /stream", func(w http.ResponseWriter, r *http.Request) {
			if _, err := io.ReadAll(r.Body); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			for i := range 8 {
				select {
				case <-r.Context().Done():
					return
				case <-time.After(100 * time.Millisecond):
				}
				fmt.Fprintf(w, "line %d\n", i)
				http.NewResponseController(w).Flush()
			}
		})
	})
	resp, err := http.Post("http://"+s.HTTPAddr()+"/stream", "text/plain", strings.NewReader("prompt"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	lines := 0
	for sc.Scan() {
		lines++
	}
	if lines != 8 {
		t.Errorf("the stream ended after %d of 8 lines (800ms, body timeout 200ms)", lines)
	}
}

// TestConnectionLimit: with MaxConns connections held open, the next client
// waits; when the holders are cut off for never sending a request, it is
// served.
func TestConnectionLimit(t *testing.T) {
	const limit = 8
	s := start(t, Config{MaxConns: limit, HeaderTimeout: time.Second}, nil)
	t0 := time.Now()
	for range limit {
		c := dial(t, s.HTTPAddr())
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\n") // never finished
	}
	served := make(chan time.Duration, 1)
	go func() {
		resp, err := http.Get("http://" + s.HTTPAddr() + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		served <- time.Since(t0)
	}()
	select {
	case d := <-served:
		t.Fatalf("client %d was served after %v while %d connections held every slot", limit+1, d, limit)
	case <-time.After(300 * time.Millisecond):
	}
	select {
	case d := <-served:
		t.Logf("client %d served after %v", limit+1, d.Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting client was never served")
	}
}

// TestGRPCHandshakeTimeout: a TCP connection to the gRPC port that never
// sends the HTTP/2 preface is closed after HeaderTimeout.
func TestGRPCHandshakeTimeout(t *testing.T) {
	s := start(t, Config{HeaderTimeout: 300 * time.Millisecond}, nil)
	c := dial(t, s.GRPCAddr())
	if !closedWithin(c, 5*time.Second) {
		t.Error("a silent gRPC connection is still open 5s after connecting")
	}
}

// TestGRPCIdleConnectionClosed: a connection with no call for IdleTimeout
// gets GOAWAY, and the client goes idle (it reconnects on its next call).
func TestGRPCIdleConnectionClosed(t *testing.T) {
	s := start(t, Config{IdleTimeout: 300 * time.Millisecond}, nil)
	conn, err := grpc.NewClient(s.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	if _, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	for st := conn.GetState(); st != connectivity.Idle; st = conn.GetState() {
		if !conn.WaitForStateChange(ctx, st) {
			t.Fatalf("connection still %v 5s after its last call", st)
		}
	}
	if _, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("call after the idle close: %v", err)
	}
}
