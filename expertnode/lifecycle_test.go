package expertnode

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
	cfg.ID = ""
	cfg.CapacityBytes = 0
	cfg.Workers = 0
	_, err := New(cfg, nil, nil)
	if err == nil {
		t.Fatal("New accepted a bad config")
	}
	for _, want := range []string{"id:", "model directory", "etcd endpoints", "capacity", "workers"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func nodeConfig(t *testing.T, etcd []string) Config {
	cfg := DefaultConfig()
	cfg.Security.Insecure = true // the lifecycle, not the security, is under test
	cfg.ID = "n1"
	cfg.ModelDir = tinyDir
	cfg.EtcdEndpoints = etcd
	cfg.GRPCAddr, cfg.HTTPAddr = lifecycletest.FreeAddr(t), lifecycletest.FreeAddr(t)
	cfg.StopTimeout = time.Second
	return cfg
}

// TestRunReleasesOnEarlyReturn runs nodes that stop before serving and
// checks that they leave their ports free (goleak in TestMain checks the
// goroutines).
func TestRunReleasesOnEarlyReturn(t *testing.T) {
	for _, tc := range []struct {
		name    string
		edit    func(*Config)
		wantErr bool
	}{
		{"bad model path", func(c *Config) { c.ModelDir = t.TempDir() + "/none" }, true},
		{"etcd unreachable", func(*Config) {}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := nodeConfig(t, []string{"http://" + lifecycletest.FreeAddr(t)})
			tc.edit(&cfg)
			n, err := New(cfg, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			if err := n.Run(ctx); (err != nil) != tc.wantErr {
				t.Fatalf("Run = %v, want error %v", err, tc.wantErr)
			}
			lifecycletest.AssertFree(t, cfg.GRPCAddr)
			lifecycletest.AssertFree(t, cfg.HTTPAddr)
		})
	}
}

// TestRunServes starts a node with a nil logger and registry against a real
// etcd: Ready closes, the addresses answer, a second Run is refused, and
// after Run returns the ports are free again.
func TestRunServes(t *testing.T) {
	srv := etcdtest.Start(t)
	n, err := New(nodeConfig(t, srv.Endpoints()), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.RunServes(t, n)
}
