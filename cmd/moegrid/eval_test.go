package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/moegrid/moegrid/cluster/etcdtest"
	"github.com/moegrid/moegrid/coordinator"
	"github.com/moegrid/moegrid/expertnode"
	"github.com/moegrid/moegrid/internal/pki"
	"github.com/moegrid/moegrid/internal/pki/pkitest"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
	"github.com/moegrid/moegrid/router"
)

// evalText is a few windows' worth of the README, a real text.
func evalText(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "text.txt")
	if err := os.WriteFile(path, raw[:2000], 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// runInBackground runs fn until the test ends, then cancels it and waits.
func runInBackground(t *testing.T, name string, run func(ctx context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("%s: %v", name, err)
		}
	})
}

// evalCluster is a whole cluster on loopback, in this process.
type evalCluster struct {
	// tlsArgs are the flags that give a CLI command an admin certificate
	// of the cluster.
	tlsArgs     []string
	router      *router.Router
	coordinator *coordinator.Coordinator
}

// startEvalCluster starts etcd, a coordinator, nodes expert nodes and a
// router serving dir on loopback, in this process, and returns once the
// router is ready. edit, when set, changes the coordinator's and the
// router's configurations first.
func startEvalCluster(t *testing.T, dir string, nodes int, edit func(*coordinator.Config, *router.Config)) evalCluster {
	t.Helper()
	p := pkitest.New(t)
	etcdFiles := p.Issue(t, pki.RoleEtcd, "etcd-0", 0)
	etcd := etcdtest.StartTLS(t, etcdtest.TLS{CertFile: etcdFiles.Cert, KeyFile: etcdFiles.Key, CAFile: etcdFiles.CA,
		Client: p.ClientTLS(t, pki.RoleAdmin, "etcd-admin")})
	admin := p.Issue(t, pki.RoleAdmin, "admin", 0)
	tlsArgs := []string{"--tls-cert", admin.Cert, "--tls-key", admin.Key, "--tls-ca", admin.CA}
	log := slog.New(slog.DiscardHandler)
	ccfg := coordinator.DefaultConfig()
	ccfg.ID = "coordinator-0"
	ccfg.EtcdEndpoints = etcd.Endpoints()
	ccfg.GRPCAddr, ccfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	ccfg.Security = p.Security(t, pki.RoleCoordinator, ccfg.ID)
	rcfg := router.DefaultConfig()
	rcfg.ModelDir = dir
	rcfg.EtcdEndpoints = etcd.Endpoints()
	rcfg.GRPCAddr, rcfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	rcfg.StopTimeout = 2 * time.Second
	rcfg.Security = p.Security(t, pki.RoleRouter, rcfg.ID)
	if edit != nil {
		edit(&ccfg, &rcfg)
	}
	coord, err := coordinator.New(ccfg, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	runInBackground(t, "coordinator", coord.Run)
	for i := range nodes {
		cfg := expertnode.DefaultConfig()
		cfg.ID = fmt.Sprintf("expert-%d", i)
		cfg.GRPCAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
		cfg.ModelDir = dir
		cfg.EtcdEndpoints = etcd.Endpoints()
		cfg.StopTimeout = 2 * time.Second
		cfg.Security = p.Security(t, pki.RoleExpertNode, cfg.ID)
		n, err := expertnode.New(cfg, log, prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		runInBackground(t, cfg.ID, n.Run)
	}
	r, err := router.New(rcfg, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	runInBackground(t, "router", r.Run)
	select {
	case <-r.Ready():
	case <-time.After(60 * time.Second):
		t.Fatal("router not serving after 60s")
	}
	probe := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.Pool()}}}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := probe.Get("https://" + r.HTTPAddr() + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return evalCluster{tlsArgs: tlsArgs, router: r, coordinator: coord}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("router not ready after 60s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func perplexityJSON(t *testing.T, args ...string) perplexityOutput {
	t.Helper()
	out, err := runCmd(t, append([]string{"eval", "perplexity", "-o", "json"}, args...)...)
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	var p perplexityOutput
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return p
}

// TestPerplexityLocalEqualsCluster scores a text in this process and
// through a real cluster (router, two expert nodes, coordinator, etcd) with
// F32 activations on the wire: the NLL is the same float64, bit for bit.
func TestPerplexityLocalEqualsCluster(t *testing.T) {
	dir, text := writeTiny(t), evalText(t)
	c := startEvalCluster(t, dir, 2, nil)
	r := c.router
	for _, tc := range []struct {
		name    string
		windows []string
	}{
		{"one window", nil},
		{"side by side", []string{"--context", "64"}},
		{"overlapping", []string{"--context", "64", "--stride", "16"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--model", dir, "--text", text}, tc.windows...)
			local := perplexityJSON(t, args...)
			remote := perplexityJSON(t, append(append(args, "--addr", r.HTTPAddr()), c.tlsArgs...)...)
			if local.Tokens < 200 || local.Mode != "local" || !strings.HasPrefix(remote.Mode, "router https://") {
				t.Fatalf("local run %+v: want hundreds of tokens in this process; remote mode %q", local, remote.Mode)
			}
			if remote.NLL != local.NLL || remote.Tokens != local.Tokens || remote.Windows != local.Windows || remote.PPL != local.PPL {
				t.Errorf("through the router %+v, in process %+v", remote, local)
			}
			if remote.Model != filepath.Base(dir) {
				t.Errorf("router's model %q, want %q", remote.Model, filepath.Base(dir))
			}
		})
	}
}

func TestEvalCommandErrors(t *testing.T) {
	dir, text := writeTiny(t), evalText(t)
	empty := filepath.Join(t.TempDir(), "empty.txt")
	if err := os.WriteFile(empty, []byte(" \n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no model", []string{"eval", "perplexity", "--text", text}, "--model is required"},
		{"no text", []string{"eval", "perplexity", "--model", dir}, "--text is required"},
		{"missing text", []string{"eval", "perplexity", "--model", dir, "--text", filepath.Join(dir, "nope")}, "no such file"},
		{"empty text", []string{"eval", "perplexity", "--model", dir, "--text", empty}, "the text is empty"},
		{"bad output", []string{"eval", "perplexity", "--model", dir, "--text", text, "-o", "yaml"}, `--output "yaml"`},
		{"context past the model", []string{"eval", "perplexity", "--model", dir, "--text", text, "--context", "40000"}, "max_position_embeddings 32768"},
		{"context 1", []string{"eval", "perplexity", "--model", dir, "--text", text, "--context", "1"}, "context 1 must be at least 2"},
		{"stride = context", []string{"eval", "perplexity", "--model", dir, "--text", text, "--context", "64", "--stride", "64"}, "stride 64 must be in [1, 63]"},
		{"bad addr", []string{"eval", "perplexity", "--model", dir, "--text", text, "--addr", "ftp://x"}, "want host:port or an http(s) URL"},
		{"no router", []string{"eval", "perplexity", "--model", dir, "--text", text, "--addr", "127.0.0.1:1", "--insecure"}, "connection refused"},
		{"experts: no model", []string{"eval", "experts", "--text", text}, "--model is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCmd(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q\n%s", err, tc.want, out)
			}
		})
	}
}

// TestEvalExperts checks the table and the JSON of `eval experts`: every
// layer's shares sum to one over num_experts_per_tok slots a token.
func TestEvalExperts(t *testing.T) {
	dir, text := writeTiny(t), evalText(t)
	out, err := runCmd(t, "eval", "experts", "--model", dir, "--text", text, "-o", "json")
	if err != nil {
		t.Fatal(err, out)
	}
	var got expertLoadOutput
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Layers) != 2 || got.ExpertsPerToken != 2 || got.Tokens < 200 {
		t.Fatalf("%d layers, %d experts per token, %d tokens; want the tiny model's 2 and 2 over hundreds of tokens", len(got.Layers), got.ExpertsPerToken, got.Tokens)
	}
	for _, l := range got.Layers {
		var slots int
		var share float64
		for e, c := range l.Counts {
			slots += c
			share += l.Fractions[e]
		}
		if slots != 2*got.Tokens || share < 1-1e-9 || share > 1+1e-9 || l.MaxOverMean < 1 || l.Entropy > 1 {
			t.Errorf("layer %d: %d slots for %d tokens, shares sum to %v, max/mean %v, entropy %v", l.Layer, slots, got.Tokens, share, l.MaxOverMean, l.Entropy)
		}
	}
	table, err := runCmd(t, "eval", "experts", "--model", dir, "--text", text)
	if err != nil {
		t.Fatal(err, table)
	}
	for _, want := range []string{"LAYER", "e7", "MAX/MEAN", "ENTROPY", fmt.Sprintf("%.2f", got.Layers[1].MaxOverMean)} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
}

// TestHotExpertReplication shows routing statistics at work: on a cluster
// with one node more than experts, the coordinator first gives the extra
// replica to expert 0 (no load yet), then, once the router has scored a
// text and reported where its gates sent the tokens, to the expert that
// `eval experts` measures as the busiest on that text in this process. The
// text is one word repeated, which the synthetic gates send to few experts.
func TestHotExpertReplication(t *testing.T) {
	dir := writeTiny(t)
	text := filepath.Join(t.TempDir(), "skewed.txt")
	if err := os.WriteFile(text, []byte(strings.Repeat("the ", 300)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runCmd(t, "eval", "experts", "--model", dir, "--text", text, "-o", "json")
	if err != nil {
		t.Fatal(err, out)
	}
	var load expertLoadOutput
	if err := json.Unmarshal([]byte(out), &load); err != nil {
		t.Fatal(err)
	}
	// The router reports rows per expert summed over layers.
	slots := make([]int, len(load.Layers[0].Counts))
	for _, l := range load.Layers {
		for e, c := range l.Counts {
			slots[e] += c
		}
	}
	hot := 0
	for e, c := range slots {
		if c > slots[hot] {
			hot = e
		}
	}
	if hot == 0 || slots[hot] < 2*slots[0] {
		t.Fatalf("slots per expert %v: the test needs a hottest expert other than 0, with twice its load", slots)
	}

	experts := len(slots)
	c := startEvalCluster(t, dir, experts+1, func(cc *coordinator.Config, rc *router.Config) {
		cc.LoadRebalanceInterval = 0
		rc.LoadReport = time.Second
	})
	// replicated returns the expert the placement holds twice, loaded on
	// both nodes, or -1.
	replicated := func() int {
		out, err := runCmd(t, append([]string{"nodes", "--coordinator", c.coordinator.GRPCAddr(), "-o", "json"}, c.tlsArgs...)...)
		if err != nil {
			t.Fatal(err, out)
		}
		var st moegridv1.StatusResponse
		if err := protojson.Unmarshal([]byte(out), &st); err != nil {
			t.Fatal(err)
		}
		for _, sh := range st.Shards {
			if len(sh.Nodes) == 2 && len(sh.LoadedOn) == 2 {
				return int(sh.Shard.Expert)
			}
		}
		return -1
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no %s after 60s", what)
			}
		}
	}
	waitFor("extra replica of expert 0 before any load", func() bool { return replicated() == 0 })
	waitFor(fmt.Sprintf("extra replica of the hot expert %d", hot), func() bool {
		perplexityJSON(t, append([]string{"--model", dir, "--text", text, "--addr", c.router.HTTPAddr()}, c.tlsArgs...)...)
		return replicated() == hot
	})
}
