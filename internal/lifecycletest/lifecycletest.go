// Package lifecycletest checks the lifecycle every moegrid server shares:
// Run binds, serves once Ready, refuses a second Run, and gives back its
// ports when it returns. The router's and the expert node's tests use it.
package lifecycletest

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"
)

// Server is the shape of router.Router and expertnode.Node.
type Server interface {
	Run(ctx context.Context) error
	Ready() <-chan struct{}
	GRPCAddr() string
	HTTPAddr() string
}

// FreeAddr returns a loopback address with a port nothing listens on.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// AssertFree fails the test if addr cannot be bound: a server still holds it.
func AssertFree(t testing.TB, addr string) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("%s still held: %v", addr, err)
	}
	l.Close()
}

// RunServes runs s, which must serve plain HTTP, until it is Ready, checks
// /healthz and that a second Run fails, then cancels it and checks that Run
// returns nil and both its ports are free again.
func RunServes(t *testing.T, s Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Ready():
	case err := <-done:
		t.Fatalf("Run returned before Ready: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("not ready after 20s")
	}
	resp, err := http.Get("http://" + s.HTTPAddr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz = %d", resp.StatusCode)
	}
	if err := s.Run(ctx); err == nil {
		t.Error("second Run succeeded")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	AssertFree(t, s.GRPCAddr())
	AssertFree(t, s.HTTPAddr())
}
