package serve

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/moegrid/moegrid/internal/lifecycletest"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestProbes checks the standard endpoints through a server's life: not
// ready, ready, ready but failing its check, and stopped.
func TestProbes(t *testing.T) {
	var depOK atomic.Bool
	depOK.Store(true)
	s, err := newBound(Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", ReadyCheck: func(context.Context) error {
		if !depOK.Load() {
			return errors.New("dependency down")
		}
		return nil
	}}, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	conn, err := grpc.NewClient(s.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	check := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		resp, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{Service: "svc"})
		if err != nil || resp.Status != want {
			t.Errorf("health svc = %v, %v; want %v", resp.GetStatus(), err, want)
		}
	}
	base := "http://" + s.HTTPAddr()

	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}
	if code, _ := get(t, base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before ready = %d", code)
	}
	s.SetReady(true, "svc")
	check(healthpb.HealthCheckResponse_SERVING)
	if code, _ := get(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz when ready = %d", code)
	}
	depOK.Store(false)
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "dependency down") {
		t.Errorf("/readyz with the check failing = %d %q", code, body)
	}
	if code, body := get(t, base+"/metrics"); code != http.StatusOK || !strings.Contains(body, "grpc_server_handled_total") {
		t.Errorf("/metrics = %d, lacks the RPC metrics", code)
	}
	s.SetReady(false, "svc")
	check(healthpb.HealthCheckResponse_NOT_SERVING)

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func TestHTTPDisabled(t *testing.T) {
	s, err := newBound(Config{GRPCAddr: "127.0.0.1:0"}, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.HTTPAddr() != "" {
		t.Errorf("HTTPAddr = %q with HTTP disabled", s.HTTPAddr())
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.Run(ctx); err != nil {
		t.Errorf("Run: %v", err)
	}
}

// newBound builds servers with cfg and binds them.
func newBound(cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Servers, error) {
	s, err := New(cfg, reg, log)
	if err != nil {
		return nil, err
	}
	if err := s.Bind(); err != nil {
		return nil, err
	}
	return s, nil
}

// TestNewBindsNothing checks that only Bind and Run take ports, and that a
// failed Bind gives back the one it took.
func TestNewBindsNothing(t *testing.T) {
	grpcAddr := lifecycletest.FreeAddr(t)
	s, err := New(Config{GRPCAddr: grpcAddr, HTTPAddr: "127.0.0.1:0"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	busy, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		t.Fatalf("New held its gRPC address: %v", err)
	}
	if err := s.Bind(); err == nil {
		t.Fatal("Bind on a busy address succeeded")
	}
	busy.Close()

	httpBusy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer httpBusy.Close()
	grpcAddr = lifecycletest.FreeAddr(t)
	s, err = New(Config{GRPCAddr: grpcAddr, HTTPAddr: httpBusy.Addr().String()}, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(t.Context()); err == nil {
		t.Fatal("Run with a busy HTTP address succeeded")
	}
	lifecycletest.AssertFree(t, grpcAddr) // the failed Run gave back its gRPC listener
}
