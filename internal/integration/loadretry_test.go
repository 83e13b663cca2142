package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/cluster/etcdtest"
	"github.com/moegrid/moegrid/coordinator"
	"github.com/moegrid/moegrid/expertnode"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// TestExpertNodeRetriesFailedLoad: an expert node whose checkpoint cannot
// be read when its shards are placed stays unready and retries, and
// becomes ready on its own once the file is back. While it fails, the
// error (message, time, failed attempts) is in its etcd record, in the
// coordinator's Status as `moegrid nodes -o json` prints it, and in its
// metrics; once it loads, all three show none.
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
	// Its address is known once it serves: read before, it is not yet the
	// bound one, and every Status call below would fail.
	awaitReady(t, "coordinator", coord.Ready(), 30*time.Second)

	ready := func() bool {
		resp, err := http.Get("http://" + n.HTTPAddr() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	cli, err := cluster.NewEtcdClient(tc.Endpoints())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	st, err := cluster.Open(t.Context(), cli, cluster.DefaultPrefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(coord.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// shown returns the node's load error as its record, the status JSON
	// and its metrics have it; statusJSON is empty while the coordinator
	// cannot answer yet.
	shown := func() (rec *cluster.LoadError, status *moegridv1.LoadError, statusJSON string, failing float64) {
		t.Helper()
		var err error
		nodes, err := st.Nodes(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if n.ID == cfg.ID {
				rec = n.LoadError
			}
		}
		failing, err = metricValue("http://"+n.HTTPAddr()+"/metrics", "moegrid_expertnode_shard_load_failing_attempts")
		if err != nil {
			failing = -1 // not serving yet
		}
		resp, err := moegridv1.NewClusterClient(conn).Status(t.Context(), &moegridv1.StatusRequest{})
		if err != nil {
			return rec, nil, "", failing
		}
		var js strings.Builder
		if err := coordinator.WriteStatusJSON(&js, resp); err != nil {
			t.Fatal(err)
		}
		var parsed struct {
			Nodes []struct {
				ID        string          `json:"id"`
				LoadError json.RawMessage `json:"loadError"`
			} `json:"nodes"`
		}
		if err := json.Unmarshal([]byte(js.String()), &parsed); err != nil {
			t.Fatal(err)
		}
		for i, n := range parsed.Nodes {
			if n.ID == cfg.ID {
				status, statusJSON = resp.Nodes[i].LoadError, string(n.LoadError)
			}
		}
		return rec, status, statusJSON, failing
	}

	// The record, the coordinator's view of it (which follows a watch) and
	// the metric are read one after the other while the node retries, so a
	// pair read across a retry differs: wait for the status to show the
	// attempt the record shows. Retries double from 0.5 s, so the gaps
	// between them soon outlast the reads, however busy the machine.
	deadline := time.Now().Add(30 * time.Second)
	for {
		rec, status, js, failing := shown()
		if rec != nil && rec.Attempts >= 2 && status != nil && status.Attempts == uint32(rec.Attempts) && failing >= 2 {
			if !strings.Contains(rec.Message, ".safetensors") || time.Since(rec.Time) > time.Minute {
				t.Errorf("record's load error %+v: want the missing file named, a recent time", rec)
			}
			if status.Message != rec.Message || !status.Time.AsTime().Equal(rec.Time) {
				t.Errorf("status load error %v, record's %+v", status, rec)
			}
			var got struct {
				Message  string `json:"message"`
				Attempts uint32 `json:"attempts"`
			}
			if err := json.Unmarshal([]byte(js), &got); err != nil || got.Message != rec.Message || got.Attempts != status.Attempts {
				t.Errorf("status JSON loadError %s (%v); want the record's message and %d attempts", js, err, status.Attempts)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("load error not shown alike in record, status and metric after 30s: record %+v, status %v, metric %v", rec, status, failing)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ready() {
		t.Fatal("expert node ready while its weights cannot be read")
	}
	for _, w := range weights {
		if err := os.Rename(w+".away", w); err != nil {
			t.Fatal(err)
		}
	}
	// The next retry comes at most the node's longest retry delay (30 s)
	// after the last.
	deadline = time.Now().Add(40 * time.Second)
	for !ready() {
		if time.Now().After(deadline) {
			t.Fatal("expert node not ready 40 s after its weights came back")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The record is written before readiness is set, and the coordinator's
	// view follows its watch.
	deadline = time.Now().Add(10 * time.Second)
	for {
		rec, status, js, failing := shown()
		if rec == nil && status == nil && js == "null" && failing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("load error still shown after the load succeeded: record %+v, status %v, JSON %s, metric %v", rec, status, js, failing)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// metricValue scrapes url and returns the value of the unlabelled metric
// name.
func metricValue(url, name string) (float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(body)) {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(rest), 64)
		}
	}
	return 0, fmt.Errorf("%s has no %s", url, name)
}
