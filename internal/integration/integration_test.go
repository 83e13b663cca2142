package integration

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/cluster/etcdtest"
	"github.com/moegrid/moegrid/coordinator"
	"github.com/moegrid/moegrid/expertnode"
	"github.com/moegrid/moegrid/internal/bench"
	"github.com/moegrid/moegrid/internal/mtls"
	"github.com/moegrid/moegrid/internal/pki"
	"github.com/moegrid/moegrid/internal/pki/pkitest"
	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/sample"
	"github.com/moegrid/moegrid/model/synth"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
	"github.com/moegrid/moegrid/router"
)

// childEnv selects the child-process mode of the test binary: an expert node
// configured by the JSON in the variable, run until SIGTERM.
const childEnv = "MOEGRID_INTEGRATION_EXPERTNODE"

var tinyDir string

func TestMain(m *testing.M) {
	if cfg := os.Getenv(childEnv); cfg != "" {
		os.Exit(runChildNode(cfg))
	}
	dir, err := os.MkdirTemp("", "moegrid-integration-")
	if err != nil {
		panic(err)
	}
	p, _ := synth.PresetByName("tiny")
	if err := synth.Write(dir, synth.Options{Preset: p, Seed: 1, DType: safetensors.F32, Shards: 3}); err != nil {
		panic(err)
	}
	tinyDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func runChildNode(js string) int {
	var cfg expertnode.Config
	if err := json.Unmarshal([]byte(js), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	n, err := expertnode.New(cfg, slog.New(slog.NewTextHandler(os.Stderr, nil)), prometheus.NewRegistry())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := n.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// testCluster is a whole cluster on loopback, with mutual TLS everywhere
// unless its options say insecure.
type testCluster struct {
	etcd   *etcdtest.Server
	router *router.Router
	// conn is a client's connection to the router, with a client
	// certificate when the cluster runs TLS.
	conn *grpc.ClientConn
	// pki made every certificate; nil when insecure.
	pki *pkitest.PKI
	// http is an HTTP client that trusts the cluster's CA.
	http *http.Client
	// coordinator is the coordinator, and nodes the in-process expert
	// nodes.
	coordinator *coordinator.Coordinator
	nodes       []*expertnode.Node
	// children are expert nodes running as child processes, by ID.
	children map[string]*exec.Cmd
	// gate is in front of clusterOptions.gated.
	gate *tcpGate
}

type clusterOptions struct {
	nodes       int
	minReplicas int
	// childNodes runs the expert nodes as child processes.
	childNodes bool
	leaseTTL   time.Duration
	// waitForHolder is the router's bound on waiting for a missing expert.
	waitForHolder time.Duration
	// model is the checkpoint every component serves; default tinyDir.
	model string
	// insecure runs every component with --insecure, in plaintext.
	insecure bool
	// gated names an in-process expert node whose gRPC traffic passes
	// through tc.gate, which can cut it while the node lives on.
	gated string
	// tuneRouter, if set, edits the router's configuration.
	tuneRouter func(*router.Config)
}

// component runs fn until the test ends, then cancels it and waits.
func component(t testing.TB, name string, run func(ctx context.Context) error) {
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

func startCluster(t testing.TB, o clusterOptions) *testCluster {
	t.Helper()
	if o.leaseTTL == 0 {
		o.leaseTTL = 3 * time.Second
	}
	tc := &testCluster{children: map[string]*exec.Cmd{}, http: http.DefaultClient}
	security := func(pki.Role, string) mtls.Security { return mtls.Security{Insecure: true} }
	if o.insecure {
		tc.etcd = etcdtest.Start(t)
	} else {
		tc.pki = pkitest.New(t)
		etcdFiles := tc.pki.Issue(t, pki.RoleEtcd, "etcd-0", 0)
		tc.etcd = etcdtest.StartTLS(t, etcdtest.TLS{
			CertFile: etcdFiles.Cert, KeyFile: etcdFiles.Key, CAFile: etcdFiles.CA,
			Client: tc.pki.ClientTLS(t, pki.RoleAdmin, "admin"),
		})
		security = func(role pki.Role, name string) mtls.Security { return tc.pki.Security(t, role, name) }
		tc.http = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: tc.pki.Pool()}}}
	}
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}

	ccfg := coordinator.DefaultConfig()
	ccfg.ID = "coordinator-0"
	ccfg.EtcdEndpoints = tc.etcd.Endpoints()
	ccfg.GRPCAddr, ccfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	ccfg.LeaseTTL = o.leaseTTL
	ccfg.MinReplicas = o.minReplicas
	ccfg.Security = security(pki.RoleCoordinator, ccfg.ID)
	coord, err := coordinator.New(ccfg, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	component(t, "coordinator", coord.Run)
	tc.coordinator = coord

	for i := range o.nodes {
		cfg := expertnode.DefaultConfig()
		cfg.ID = fmt.Sprintf("expert-%d", i)
		cfg.GRPCAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
		cfg.ModelDir = cmp.Or(o.model, tinyDir)
		cfg.EtcdEndpoints = tc.etcd.Endpoints()
		cfg.LeaseTTL = o.leaseTTL
		cfg.StopTimeout = 2 * time.Second
		cfg.Security = security(pki.RoleExpertNode, cfg.ID)
		if o.childNodes {
			tc.startChild(t, cfg)
			continue
		}
		var gate *tcpGate
		if cfg.ID == o.gated {
			gate = startGate(t)
			cfg.AdvertiseAddr = gate.Addr()
			tc.gate = gate
		}
		n, err := expertnode.New(cfg, log, prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		component(t, cfg.ID, n.Run)
		tc.nodes = append(tc.nodes, n)
		if gate != nil {
			awaitReady(t, cfg.ID, n.Ready(), 60*time.Second)
			gate.setTarget(n.GRPCAddr())
		}
	}

	rcfg := router.DefaultConfig()
	rcfg.ModelDir = cmp.Or(o.model, tinyDir)
	rcfg.GRPCAddr, rcfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	rcfg.EtcdEndpoints = tc.etcd.Endpoints()
	rcfg.LeaseTTL = o.leaseTTL
	rcfg.Dispatch.WaitForHolder = 20 * time.Second
	if o.waitForHolder > 0 {
		rcfg.Dispatch.WaitForHolder = o.waitForHolder
	}
	rcfg.Dispatch.CallTimeout = 10 * time.Second
	rcfg.Security = security(pki.RoleRouter, rcfg.ID)
	if o.tuneRouter != nil {
		o.tuneRouter(&rcfg)
	}
	r, err := router.New(rcfg, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	tc.router = r
	component(t, "router", r.Run)
	awaitReady(t, "router", r.Ready(), 60*time.Second)
	tc.waitReady(t, tc.url(r.HTTPAddr(), "/readyz"), 60*time.Second)

	creds := insecure.NewCredentials()
	if tc.pki != nil {
		creds = credentials.NewTLS(tc.pki.ClientTLS(t, pki.RoleClient, "client-0"))
	}
	tc.conn, err = grpc.NewClient(r.GRPCAddr(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.conn.Close() })
	return tc
}

func (tc *testCluster) startChild(t testing.TB, cfg expertnode.Config) {
	t.Helper()
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(js))
	logf, err := os.Create(filepath.Join(t.TempDir(), cfg.ID+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tc.children[cfg.ID] = cmd
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		logf.Close()
	})
}

// awaitReady waits for a component's Ready, after which its addresses are
// valid.
func awaitReady(t testing.TB, name string, ready <-chan struct{}, timeout time.Duration) {
	t.Helper()
	select {
	case <-ready:
	case <-time.After(timeout):
		t.Fatalf("%s not serving after %v", name, timeout)
	}
}

// url is the address of path on a component's HTTP server at addr.
func (tc *testCluster) url(addr, path string) string {
	if tc.pki != nil {
		return "https://" + addr + path
	}
	return "http://" + addr + path
}

func (tc *testCluster) waitReady(t testing.TB, url string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := tc.http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s not ready after %v", url, timeout)
}

// generate runs a greedy completion through the router's gRPC API.
func (tc *testCluster) generate(ctx context.Context, prompt []int, maxTokens int) ([]int, error) {
	req := &moegridv1.GenerateRequest{MaxTokens: uint32(maxTokens), IgnoreEos: true}
	ids := &moegridv1.TokenIDs{}
	for _, id := range prompt {
		ids.Ids = append(ids.Ids, uint32(id))
	}
	req.Prompt = &moegridv1.GenerateRequest_Ids{Ids: ids}
	stream, err := moegridv1.NewGenerationClient(tc.conn).Generate(ctx, req)
	if err != nil {
		return nil, err
	}
	var out []int
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		for _, id := range msg.TokenIds {
			out = append(out, int(id))
		}
	}
}

// local is the in-process model, the reference for the cluster.
type local struct {
	*model.Model
	experts *model.ExpertSet
}

func loadLocal(t *testing.T) local {
	t.Helper()
	m, err := model.Load(tinyDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	ex, err := model.LoadExperts(tinyDir, m.Config, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ex.Close() })
	return local{m, ex}
}

func (l local) greedy(t *testing.T, prompt []int, n int) []int {
	t.Helper()
	out, err := l.Generate(t.Context(), l.experts, prompt, n, true, sample.Greedy)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// prompts are token-id prompts of several lengths (BOS first).
var prompts = [][]int{
	{1},
	{1, 415},
	{1, 22557, 1526, 28808},
	{1, 415, 5565, 302, 4843, 349, 5465, 28723, 415, 5565, 302, 7293, 349},
	{1, 330, 1628, 1316, 28725, 736, 403, 264, 3526, 693, 2943, 297, 264, 1628, 2134, 28723, 650, 6045, 298, 1220, 28723, 3301, 1370, 28725, 400, 682, 1220},
}

// TestDistributedEqualsLocal checks that the cluster computes exactly what
// the in-process model computes: identical logits, bit for bit, with F32
// activations on the wire, and identical greedy tokens for several prompts
// and for 16 concurrent requests.
func TestDistributedEqualsLocal(t *testing.T) {
	tc := startCluster(t, clusterOptions{nodes: 8, minReplicas: 1})
	lm := loadLocal(t)

	t.Run("logits", func(t *testing.T) {
		remote := tc.router.Experts()
		for i, p := range prompts {
			want, err := lm.Forward(t.Context(), lm.experts, []model.Input{{Cache: lm.NewCache(), Tokens: p, AllLogits: true}})
			if err != nil {
				t.Fatal(err)
			}
			got, err := lm.Forward(t.Context(), remote, []model.Input{{Cache: lm.NewCache(), Tokens: p, AllLogits: true}})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Logits[0], want.Logits[0]) {
				t.Errorf("prompt %d: cluster logits differ from in-process logits", i)
			}
		}
	})

	// A prompt run one layer a step beside a decoding sequence, as the
	// scheduler runs a long prompt's tail: each layer's rows over the
	// network are a subset of the step's.
	t.Run("split between layers", func(t *testing.T) {
		remote := tc.router.Experts()
		forward := func(experts model.Experts, inputs ...model.Input) *model.Result {
			t.Helper()
			res, err := lm.Forward(t.Context(), experts, inputs)
			if err != nil {
				t.Fatal(err)
			}
			return res
		}
		prompt, other := prompts[0], prompts[1]
		want := forward(lm.experts, model.Input{Cache: lm.NewCache(), Tokens: prompt, AllLogits: true})
		decLocal, decRemote := lm.NewCache(), lm.NewCache()
		forward(lm.experts, model.Input{Cache: decLocal, Tokens: other})
		forward(remote, model.Input{Cache: decRemote, Tokens: other})
		split := lm.NewCache()
		in := model.Input{Cache: split, Tokens: prompt, AllLogits: true, Layers: 1}
		for step := 0; ; step++ {
			res := forward(remote, model.Input{Cache: decRemote, Tokens: []int{500 + step}}, in)
			ref := forward(lm.experts, model.Input{Cache: decLocal, Tokens: []int{500 + step}})
			if !slices.Equal(res.Logits[0], ref.Logits[0]) {
				t.Fatalf("step %d: the decoding sequence's cluster logits differ from in-process", step)
			}
			if res.Partials[1] == nil {
				if !slices.Equal(res.Logits[1], want.Logits[0]) {
					t.Errorf("prompt split between layers over the cluster: logits differ from in-process in one step")
				}
				return
			}
			in = model.Input{Cache: split, Resume: res.Partials[1], Layers: 1}
		}
	})

	t.Run("greedy", func(t *testing.T) {
		for i, p := range prompts {
			want := lm.greedy(t, p, 12)
			got, err := tc.generate(t.Context(), p, 12)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("prompt %d: cluster %v, in-process %v", i, got, want)
			}
		}
	})

	t.Run("16 concurrent", func(t *testing.T) {
		const n = 16
		var wg sync.WaitGroup
		got := make([][]int, n)
		errs := make([]error, n)
		reqs := make([][]int, n)
		for i := range n {
			// Distinct prompts: a base prompt plus a per-request token.
			reqs[i] = append(slices.Clone(prompts[i%len(prompts)]), 100+i)
			wg.Go(func() { got[i], errs[i] = tc.generate(t.Context(), reqs[i], 10) })
		}
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Errorf("request %d: %v", i, errs[i])
				continue
			}
			if want := lm.greedy(t, reqs[i], 10); !slices.Equal(got[i], want) {
				t.Errorf("request %d: cluster %v, in-process %v", i, got[i], want)
			}
		}
	})
}

// TestExpertKilledMidGeneration kills an expert node's process while a
// generation runs; with every expert on two nodes the request completes with
// the same tokens as without the fault.
func TestExpertKilledMidGeneration(t *testing.T) {
	tc := startCluster(t, clusterOptions{nodes: 8, minReplicas: 2, childNodes: true})
	lm := loadLocal(t)
	prompt := prompts[3]
	const n = 48
	want := lm.greedy(t, prompt, n)

	got, err := tc.generateKilling(t, prompt, n, "expert-3", 4)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("with a node killed: %v\nwithout fault:      %v", got, want)
	}
	// Later requests keep working on the surviving replicas.
	again, err := tc.generate(t.Context(), prompts[2], 8)
	if err != nil {
		t.Fatal(err)
	}
	if w := lm.greedy(t, prompts[2], 8); !slices.Equal(again, w) {
		t.Errorf("after the fault: %v, want %v", again, w)
	}
}

func toU32(ids []int) []uint32 {
	out := make([]uint32, len(ids))
	for i, id := range ids {
		out[i] = uint32(id)
	}
	return out
}

// TestEtcdDownKeepsServing checks the failure rule "etcd down: the data
// plane keeps serving on the last placement": with etcd stopped, requests
// still complete with the in-process model's tokens, and once etcd is back
// the cluster carries on.
func TestEtcdDownKeepsServing(t *testing.T) {
	tc := startCluster(t, clusterOptions{nodes: 8, minReplicas: 1})
	lm := loadLocal(t)
	want := lm.greedy(t, prompts[2], 8)

	tc.etcd.Stop()
	// Longer than the lease TTL: nothing may expire the nodes while etcd
	// is away, and the router must not forget them.
	time.Sleep(4 * time.Second)
	for i := range 3 {
		got, err := tc.generate(t.Context(), prompts[2], 8)
		if err != nil {
			t.Fatalf("request %d with etcd down: %v", i, err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("request %d with etcd down: %v, want %v", i, got, want)
		}
	}

	tc.etcd.Resume()
	tc.waitReady(t, tc.url(tc.router.HTTPAddr(), "/readyz"), 30*time.Second)
	got, err := tc.generate(t.Context(), prompts[2], 8)
	if err != nil {
		t.Fatalf("after etcd came back: %v", err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("after etcd came back: %v, want %v", got, want)
	}
}

// TestExpertKilledWithoutReplica kills the only holder of some experts: the
// router waits for the coordinator to re-place them and the request
// completes with the fault-free tokens; with nowhere to re-place them it
// fails UNAVAILABLE, naming the experts, as soon as gossip declares the node
// dead rather than at the wait bound.
func TestExpertKilledWithoutReplica(t *testing.T) {
	lm := loadLocal(t)
	prompt := prompts[3]

	t.Run("re-placed", func(t *testing.T) {
		tc := startCluster(t, clusterOptions{nodes: 8, minReplicas: 1, childNodes: true})
		const n = 24
		want := lm.greedy(t, prompt, n)
		got, err := tc.generateKilling(t, prompt, n, "expert-5", 3)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("with the node killed: %v\nwithout fault:       %v", got, want)
		}
	})

	t.Run("nowhere to go", func(t *testing.T) {
		const wait = 20 * time.Second
		tc := startCluster(t, clusterOptions{nodes: 1, minReplicas: 1, childNodes: true, waitForHolder: wait})
		start := time.Now()
		_, err := tc.generateKilling(t, prompt, 24, "expert-0", 3)
		if msg := status.Convert(err).Message(); status.Code(err) != codes.Unavailable || !strings.Contains(msg, "no live replica") || !strings.Contains(msg, "cannot get one") {
			t.Fatalf("got %v, want UNAVAILABLE: no live replica, cannot get one", err)
		}
		if d := time.Since(start); d > wait/2 {
			t.Errorf("failed after %v, want as soon as gossip declares the node dead, well before the %v wait bound", d, wait)
		}
	})
}

// generateKilling streams a greedy completion and SIGKILLs the named expert
// node's process once after tokens have arrived.
func (tc *testCluster) generateKilling(t *testing.T, prompt []int, n int, victim string, after int) ([]int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	stream, err := moegridv1.NewGenerationClient(tc.conn).Generate(ctx, &moegridv1.GenerateRequest{
		Prompt:    &moegridv1.GenerateRequest_Ids{Ids: &moegridv1.TokenIDs{Ids: toU32(prompt)}},
		MaxTokens: uint32(n), IgnoreEos: true,
	})
	if err != nil {
		return nil, err
	}
	var got []int
	killed := false
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if !killed {
				t.Fatal("the generation ended before the node was killed")
			}
			return got, nil
		}
		if err != nil {
			return got, err
		}
		for _, id := range msg.TokenIds {
			got = append(got, int(id))
		}
		if !killed && len(got) >= after {
			if err := tc.children[victim].Process.Kill(); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
}

// TestBench runs the load generator of moegrid bench against the cluster:
// every request completes with exactly the tokens asked for, and the
// latencies it reports are consistent.
func TestBench(t *testing.T) {
	tc := startCluster(t, clusterOptions{nodes: 8, minReplicas: 1})
	cfg := bench.Config{Requests: 12, Concurrency: 4, PromptTokens: 16, MaxTokens: 8, Vocab: 32000, Seed: 7, Timeout: time.Minute}
	res, err := bench.Run(t.Context(), moegridv1.NewGenerationClient(tc.conn), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Failed != 0 || res.Tokens != cfg.Requests*cfg.MaxTokens {
		t.Fatalf("result %+v: want no failures and %d tokens", res, cfg.Requests*cfg.MaxTokens)
	}
	if !(res.TTFT.P50 > 0 && res.TTFT.P50 <= res.Latency.P50 && res.InterToken.P50 > 0 && res.TokensPerSecond > 0) {
		t.Errorf("inconsistent latencies: %+v", res)
	}
}
