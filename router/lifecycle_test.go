package router

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/moegrid/moegrid/cluster/etcdtest"
	"github.com/moegrid/moegrid/internal/lifecycletest"
)

func TestNewReportsEveryProblem(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ID = "bad id"
	cfg.DefaultMaxTokens = 0
	cfg.Dispatch.WaitForHolder = 0
	cfg.MaxExplainTokens = -1
	_, err := New(cfg, nil, nil)
	if err == nil {
		t.Fatal("New accepted a bad config")
	}
	for _, want := range []string{"model directory", "etcd endpoints", "id:", "default max tokens", "wait for holder", "max explain tokens"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
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
		{"etcd unreachable", func(c *Config) { c.EtcdEndpoints = []string{"http://" + lifecycletest.FreeAddr(t)} }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Security.Insecure = true // the lifecycle, not the security, is under test
			cfg.ModelDir = fx.dir
			cfg.EtcdEndpoints = []string{"http://127.0.0.1:1"}
			cfg.GRPCAddr, cfg.HTTPAddr = lifecycletest.FreeAddr(t), lifecycletest.FreeAddr(t)
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
			lifecycletest.AssertFree(t, cfg.GRPCAddr)
			lifecycletest.AssertFree(t, cfg.HTTPAddr)
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
	lifecycletest.RunServes(t, r)
}
