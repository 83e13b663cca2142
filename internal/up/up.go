// Package up runs a whole moegrid cluster on one machine: an embedded etcd
// in this process, and coordinators, expert nodes and a router as child
// processes of the moegrid binary on loopback. It is what `moegrid up` does.
//
// Children are started with PDEATHSIG so they die with this process even if
// it is killed. Once the cluster is ready, a child that dies is started
// again after a delay that doubles with each quick death (see Backoff); a
// child that dies before the cluster is ready fails the start instead, since
// that is a configuration error more often than a crash. On a normal stop
// the router gets SIGTERM first and time to finish its streams, then the
// rest; whatever outlives StopTimeout is killed, and Run returns only once
// every child has exited.
package up

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/moegrid/moegrid/internal/pki"
	"github.com/moegrid/moegrid/model/demo"
)

// Config configures a local cluster.
type Config struct {
	// Executable is the moegrid binary the children run.
	Executable string
	// ModelDir is the checkpoint; empty means the embedded demo model
	// (package model/demo), written into CacheDir on first use.
	ModelDir string
	// CacheDir holds generated models.
	CacheDir string
	// StateDir holds etcd's data, the children's logs and State.
	StateDir string
	// Nodes is the number of expert nodes.
	Nodes int
	// Coordinators is the number of coordinator replicas; one leads, the
	// others take over when it dies. 0 means 2.
	Coordinators int
	// MinReplicas is the coordinator's minimum replica count per expert.
	MinReplicas int
	// RouterGRPC, RouterHTTP and CoordinatorGRPC are listen addresses;
	// port 0 picks a free port. CoordinatorGRPC is the first coordinator's;
	// the others listen on free ports.
	RouterGRPC, RouterHTTP, CoordinatorGRPC string
	// APIKeysFile, if set, is the router's API key file (router --api-keys).
	APIKeysFile string
	// MaxExplainTokens, if positive, is the router's --max-explain-tokens.
	MaxExplainTokens int
	// LeaseTTL is the etcd lease time to live of the nodes and of the
	// coordinators' election.
	LeaseTTL time.Duration
	// ReadyTimeout bounds the wait for the router to be ready.
	ReadyTimeout time.Duration
	// StopTimeout bounds each child's graceful stop.
	StopTimeout time.Duration
	// Restart is how soon a child that died is started again.
	Restart Backoff
	// EtcdCompaction is how much history the embedded etcd keeps: it
	// compacts away revisions older than this, every EtcdCompaction (etcd's
	// periodic auto-compaction). 0 means 5 minutes.
	EtcdCompaction time.Duration
	// LogLevel is passed to the children.
	LogLevel string
	// Insecure runs everything in plaintext with no identity checks.
	// Otherwise StateDir/tls holds a CA (made on first start, kept
	// after), the gossip key and one certificate per role, and every
	// child, etcd included, runs mutual TLS with them.
	Insecure bool
}

// Backoff is the delay before a dead child is started again: Min after the
// first death, doubling with each death that follows a short run, up to
// Max. A child that ran for Reset before dying counts as healthy: its next
// restart waits Min again. Zero fields take the defaults 500ms, 30s and 1m;
// a Max below Min is Min.
type Backoff struct {
	Min, Max time.Duration
	Reset    time.Duration
}

func (b *Backoff) setDefaults() {
	if b.Min <= 0 {
		b.Min = 500 * time.Millisecond
	}
	if b.Max <= 0 {
		b.Max = 30 * time.Second
	}
	b.Max = max(b.Max, b.Min)
	if b.Reset <= 0 {
		b.Reset = time.Minute
	}
}

// State is what a running local cluster writes to StateDir/up.json for the
// other commands (`moegrid generate` with no --addr) to find it.
type State struct {
	PID        int      `json:"pid"`
	ModelDir   string   `json:"model_dir"`
	Etcd       []string `json:"etcd_endpoints"`
	RouterGRPC string   `json:"router_grpc"`
	RouterHTTP string   `json:"router_http"`
	// CoordinatorGRPC is the first coordinator; Coordinators lists every
	// replica's gRPC address, the first one included.
	CoordinatorGRPC string   `json:"coordinator_grpc"`
	Coordinators    []string `json:"coordinators"`
	Logs            string   `json:"logs"`
	// TLSDir is the certificate directory (pki.Dir) of a cluster that
	// runs TLS: its ca.crt and the AdminCert let the CLI in. Empty when
	// Insecure.
	TLSDir   string `json:"tls_dir,omitempty"`
	Insecure bool   `json:"insecure,omitempty"`
}

// TLSDirOf is where a state directory keeps its certificates.
func TLSDirOf(stateDir string) pki.Dir { return pki.Dir(filepath.Join(stateDir, "tls")) }

// Running reports whether the process that wrote the state still runs.
func (st State) Running() bool { return processAlive(st.PID) }

// StateFile is where State lives in a state directory.
func StateFile(stateDir string) string { return filepath.Join(stateDir, "up.json") }

// ReadState reads the state of a running local cluster.
func ReadState(stateDir string) (State, error) {
	var st State
	data, err := os.ReadFile(StateFile(stateDir))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("%s: %w", StateFile(stateDir), err)
	}
	return st, nil
}

// Run starts the cluster, reports it on out once the router is ready, and
// runs until ctx is done, restarting children that die and saying so on
// out; then it stops every child and etcd.
func Run(ctx context.Context, cfg Config, out io.Writer, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Nodes < 1 {
		return fmt.Errorf("up: --nodes %d must be at least 1", cfg.Nodes)
	}
	if cfg.Coordinators == 0 {
		cfg.Coordinators = 2
	}
	if cfg.Coordinators < 1 {
		return fmt.Errorf("up: --coordinators %d must be at least 1", cfg.Coordinators)
	}
	if cfg.MaxExplainTokens < 0 {
		return fmt.Errorf("up: --max-explain-tokens %d must not be negative", cfg.MaxExplainTokens)
	}
	if cfg.EtcdCompaction == 0 {
		cfg.EtcdCompaction = 5 * time.Minute
	}
	if cfg.EtcdCompaction < time.Second {
		return fmt.Errorf("up: --etcd-compaction %v must be at least 1s", cfg.EtcdCompaction)
	}
	out = &syncWriter{w: out}
	modelDir, err := ensureModel(cfg, out)
	if err != nil {
		return err
	}
	logs := filepath.Join(cfg.StateDir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	if old, err := ReadState(cfg.StateDir); err == nil && processAlive(old.PID) {
		return fmt.Errorf("up: a local cluster (pid %d) already runs with state in %s", old.PID, cfg.StateDir)
	}

	// The first coordinator listens where the flag says; the others on
	// free loopback ports, never on every interface.
	coordinators := make([]string, cfg.Coordinators)
	coordinators[0] = cfg.CoordinatorGRPC
	for i := 1; i < len(coordinators); i++ {
		coordinators[i] = "127.0.0.1:0"
	}
	addrs := []*string{&cfg.RouterGRPC, &cfg.RouterHTTP}
	for i := range coordinators {
		addrs = append(addrs, &coordinators[i])
	}
	for _, a := range addrs {
		if *a, err = concreteAddr(*a); err != nil {
			return err
		}
	}
	cfg.CoordinatorGRPC = coordinators[0]
	tlsDir := TLSDirOf(cfg.StateDir)
	var etcdInfo *transport.TLSInfo
	security := func(pki.Role) []string { return []string{"--insecure"} }
	scheme := "http"
	readyClient := &http.Client{Timeout: time.Second}
	if cfg.Insecure {
		fmt.Fprintln(out, "WARNING: --insecure: every connection is plaintext and unauthenticated; anyone who reaches these ports can drive the cluster")
		log.Warn("running INSECURE: plaintext gRPC, HTTP, etcd and gossip, no identity checks (--insecure)")
	} else {
		if err := ensureCerts(tlsDir, out); err != nil {
			return err
		}
		info := etcdTLS(tlsDir)
		etcdInfo = &info
		security = func(r pki.Role) []string { return tlsArgs(tlsDir, r) }
		scheme = "https"
		probe, err := probeTLS(tlsDir)
		if err != nil {
			return err
		}
		readyClient.Transport = &http.Transport{TLSClientConfig: probe}
	}
	etcd, endpoint, err := startEtcd(filepath.Join(cfg.StateDir, "etcd"), cfg.EtcdCompaction, etcdInfo)
	if err != nil {
		return err
	}
	defer func() {
		etcd.Close()
		<-etcd.Err()
	}()

	sup := newSupervisor(cfg.Executable, logs, cfg.StopTimeout, cfg.Restart, out, log)
	defer sup.stopAll()
	common := []string{"--etcd-endpoints", endpoint, "--log-level", cfg.LogLevel}
	ttl := cfg.LeaseTTL.String()
	for i, addr := range coordinators {
		id := fmt.Sprintf("coordinator-%d", i)
		if err := sup.start(id, false, append([]string{"coordinator", "--id", id,
			"--grpc-addr", addr, "--http-addr", "127.0.0.1:0",
			"--min-replicas", strconv.Itoa(cfg.MinReplicas), "--lease-ttl", ttl}, slices.Concat(common, security(pki.RoleCoordinator))...)); err != nil {
			return err
		}
	}
	for i := range cfg.Nodes {
		id := fmt.Sprintf("expert-%d", i)
		if err := sup.start(id, false, append([]string{"expertnode", "--id", id, "--model", modelDir,
			"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--lease-ttl", ttl}, slices.Concat(common, security(pki.RoleExpertNode))...)); err != nil {
			return err
		}
	}
	routerArgs := []string{"router", "--id", "router-0", "--model", modelDir,
		"--grpc-addr", cfg.RouterGRPC, "--http-addr", cfg.RouterHTTP, "--lease-ttl", ttl}
	if cfg.APIKeysFile != "" {
		routerArgs = append(routerArgs, "--api-keys", cfg.APIKeysFile)
	}
	if cfg.MaxExplainTokens > 0 {
		routerArgs = append(routerArgs, "--max-explain-tokens", strconv.Itoa(cfg.MaxExplainTokens))
	}
	if err := sup.start("router", true, append(routerArgs, slices.Concat(common, security(pki.RoleRouter))...)); err != nil {
		return err
	}

	if err := waitReady(ctx, readyClient, scheme+"://"+cfg.RouterHTTP+"/readyz", cfg.ReadyTimeout, sup); err != nil {
		return fmt.Errorf("up: %w (logs in %s)", err, logs)
	}
	if name, err := sup.arm(); name != "" {
		return fmt.Errorf("up: %s exited: %v (logs in %s)", name, err, logs)
	}
	st := State{
		PID: os.Getpid(), ModelDir: modelDir, Etcd: []string{endpoint},
		RouterGRPC: cfg.RouterGRPC, RouterHTTP: cfg.RouterHTTP,
		CoordinatorGRPC: cfg.CoordinatorGRPC, Coordinators: coordinators, Logs: logs,
		Insecure: cfg.Insecure,
	}
	curl := "curl -s"
	if !cfg.Insecure {
		st.TLSDir = string(tlsDir)
		curl += " --cacert " + tlsDir.CACert()
	}
	if err := writeState(cfg.StateDir, st); err != nil {
		return err
	}
	defer os.Remove(StateFile(cfg.StateDir))

	fmt.Fprintf(out, `moegrid is up: %d expert nodes, %d coordinators and a router serving %s

  router gRPC    %s   (moegrid.v1.Generation)
  router HTTP    %s://%s   (OpenAI API: /v1/completions, /v1/chat/completions, /v1/models)
  coordinators   %s   (moegrid.v1.Cluster; moegrid nodes --coordinator %s)
  etcd           %s
  logs           %s

Try:
  moegrid generate "And God said"
  %s %s://%s/v1/completions -d '{"prompt": "In the beginning", "max_tokens": 16}'

A child that dies is restarted. Ctrl-C stops everything.
`, cfg.Nodes, cfg.Coordinators, modelDir, cfg.RouterGRPC, scheme, cfg.RouterHTTP, strings.Join(coordinators, ", "), cfg.CoordinatorGRPC, endpoint, logs, curl, scheme, cfg.RouterHTTP)

	select {
	case <-ctx.Done():
		fmt.Fprintln(out, "stopping…")
		return nil
	case err := <-etcd.Err():
		return fmt.Errorf("up: etcd stopped: %w", err)
	}
}

// syncWriter serialises writes from the supervisor's goroutines and Run.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer // protected by mu
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// ensureModel returns the checkpoint to serve: cfg.ModelDir, or else the
// embedded demo model, written into the cache on first use.
func ensureModel(cfg Config, out io.Writer) (string, error) {
	if cfg.ModelDir != "" {
		return cfg.ModelDir, nil
	}
	dir, err := demo.Ensure(cfg.CacheDir)
	if err != nil {
		return "", fmt.Errorf("up: %w", err)
	}
	fmt.Fprintf(out, "serving the built-in demo model %s (trained on the King James Bible)\n", demo.Name)
	return dir, nil
}

func writeState(dir string, st State) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := StateFile(dir) + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	return os.Rename(tmp, StateFile(dir))
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	return syscall.Kill(pid, 0) == nil
}

// concreteAddr replaces port 0 by a free port, so the address can be given
// to a child and printed before the child binds it; a fixed port is checked
// to be free, so that a second cluster fails here rather than half-starting
// and answering through the first one's ports.
func concreteAddr(addr string) (string, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("up: %s is not free (another moegrid up? choose other addresses with the flags): %w", addr, err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startEtcd starts a single-member etcd on free loopback ports that keeps
// compaction of history: without it, etcd keeps every revision of the
// records the cluster rewrites all the time (heartbeats, load reports) and
// its database grows without bound.
//
// With tlsInfo set, clients and peers speak TLS and must show a
// certificate from its CA.
func startEtcd(dir string, compaction time.Duration, tlsInfo *transport.TLSInfo) (*embed.Etcd, string, error) {
	if err := os.RemoveAll(dir); err != nil {
		return nil, "", fmt.Errorf("up: %w", err)
	}
	client, err := concreteAddr("127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	peer, err := concreteAddr("127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	cfg := embed.NewConfig()
	cfg.Name = "moegrid-up"
	cfg.Dir = dir
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cu, pu := url.URL{Scheme: "http", Host: client}, url.URL{Scheme: "http", Host: peer}
	if tlsInfo != nil {
		cu.Scheme, pu.Scheme = "https", "https"
		cfg.ClientTLSInfo, cfg.PeerTLSInfo = *tlsInfo, *tlsInfo
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = compaction.String()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("up: etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, "", errors.New("up: etcd not ready after 30s")
	}
	return e, cu.String(), nil
}
