package router

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/moegrid/moegrid/cluster/etcdtest"
)

func TestNewReportsEveryProblem(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ID = "bad id"
	cfg.DefaultMaxTokens = 0
	cfg.Dispatch.WaitForHolder = 0
	_, err := New(cfg, nil, nil)
	if err == nil {
		t.Fatal("New accepted a bad config")
	}
	for _, want := range []string{"model directory", "etcd endpoints", "id:", "default max tokens", "wait for holder"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// assertFree fails unless addr can be bound again.
func assertFree(t *testing.T, addr string) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("%s still held: %v", addr, err)
	}
	l.Close()
}

// TestRunReleasesOnEarlyReturn runs routers that stop before serving and
// checks that they leave their ports free (goleak in TestMain checks the
// goroutines).
func TestRunReleasesOnEarlyReturn(t *testing.T) {
	for _, tc := range []struct {
		name    string
		edit    func(*Config)
		wantErr bool
	}{
		{"bad model path", func(c *Config) { c.ModelDir = t.TempDir() + "/none" }, true},
		{"etcd unreachable", func(c *Config) { c.EtcdEndpoints = []string{"http://" + freeAddr(t)} }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Security.Insecure = true // the lifecycle, not the security, is under test
			cfg.ModelDir = fx.dir
			cfg.EtcdEndpoints = []string{"http://127.0.0.1:1"}
			cfg.GRPCAddr, cfg.HTTPAddr = freeAddr(t), freeAddr(t)
			tc.edit(&cfg)
			r, err := New(cfg, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			err = r.Run(ctx)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Run = %v, want error %v", err, tc.wantErr)
			}
			assertFree(t, cfg.GRPCAddr)
			assertFree(t, cfg.HTTPAddr)
		})
	}
}

// TestRunServes starts a router with a nil logger and registry against a
// real etcd: Ready closes, the addresses answer, and after Run returns they
// are free again.
func TestRunServes(t *testing.T) {
	srv := etcdtest.Start(t)
	cfg := DefaultConfig()
	cfg.Security.Insecure = true // the lifecycle, not the security, is under test
	cfg.ModelDir = fx.dir
	cfg.EtcdEndpoints = srv.Endpoints()
	cfg.GRPCAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.StopTimeout = time.Second
	r, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	select {
	case <-r.Ready():
	case err := <-done:
		t.Fatalf("Run returned before Ready: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("not ready after 20s")
	}
	resp, err := http.Get("http://" + r.HTTPAddr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz = %d", resp.StatusCode)
	}
	if err := r.Run(ctx); err == nil {
		t.Error("second Run succeeded")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	assertFree(t, r.GRPCAddr())
	assertFree(t, r.HTTPAddr())
}
