package integration

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/moegrid/moegrid/cluster/etcdtest"
	"github.com/moegrid/moegrid/coordinator"
	"github.com/moegrid/moegrid/expertnode"
)

// TestExpertNodeRetriesFailedLoad: an expert node whose checkpoint cannot
// be read when its shards are placed stays unready and retries, and
// becomes ready on its own once the file is back.
func TestExpertNodeRetriesFailedLoad(t *testing.T) {
	dir := t.TempDir()
	entries, err := os.ReadDir(tinyDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(tinyDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tc := etcdtest.Start(t)

	ccfg := coordinator.DefaultConfig()
	ccfg.ID = "coordinator-0"
	ccfg.EtcdEndpoints = tc.Endpoints()
	ccfg.GRPCAddr, ccfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	ccfg.LeaseTTL = 3 * time.Second
	ccfg.Security.Insecure = true
	coord, err := coordinator.New(ccfg, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}

	cfg := expertnode.DefaultConfig()
	cfg.ID = "expert-0"
	cfg.GRPCAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.ModelDir = dir
	cfg.EtcdEndpoints = tc.Endpoints()
	cfg.LeaseTTL = 3 * time.Second
	cfg.StopTimeout = 2 * time.Second
	cfg.Security.Insecure = true
	n, err := expertnode.New(cfg, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	component(t, cfg.ID, n.Run)
	// The weights go away once the node has read the checkpoint's headers
	// and registered, before the coordinator runs to place its shards.
	awaitReady(t, cfg.ID, n.Ready(), 30*time.Second)
	weights, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil || len(weights) == 0 {
		t.Fatalf("no weight files in %s: %v", dir, err)
	}
	for _, w := range weights {
		if err := os.Rename(w, w+".away"); err != nil {
			t.Fatal(err)
		}
	}
	component(t, "coordinator", coord.Run)

	ready := func() bool {
		resp, err := http.Get("http://" + n.HTTPAddr() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	time.Sleep(2 * time.Second) // placement written, first loads failed
	if ready() {
		t.Fatal("expert node ready while its weights cannot be read")
	}
	for _, w := range weights {
		if err := os.Rename(w+".away", w); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(40 * time.Second)
	for !ready() {
		if time.Now().After(deadline) {
			t.Fatal("expert node not ready 40 s after its weights came back")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
