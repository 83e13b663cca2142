// Package up runs a whole moegrid cluster on one machine: an embedded etcd
// in this process, and a coordinator, expert nodes and a router as child
// processes of the moegrid binary on loopback. It is what `moegrid up` does.
//
// Children are started with PDEATHSIG so they die with this process even if
// it is killed; on a normal stop they get SIGTERM, time to drain, then
// SIGKILL, and Run returns only once every one of them has exited.
package up

import (
	"bufio"
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
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/synth"
)

// Config configures a local cluster.
type Config struct {
	// Executable is the moegrid binary the children run.
	Executable string
	// ModelDir is the checkpoint; empty means the synthetic tiny model,
	// generated into CacheDir on first use.
	ModelDir string
	// CacheDir holds generated models.
	CacheDir string
	// StateDir holds etcd's data, the children's logs and State.
	StateDir string
	// Nodes is the number of expert nodes.
	Nodes int
	// MinReplicas is the coordinator's minimum replica count per expert.
	MinReplicas int
	// RouterGRPC, RouterHTTP and CoordinatorGRPC are listen addresses;
	// port 0 picks a free port.
	RouterGRPC, RouterHTTP, CoordinatorGRPC string
	// LeaseTTL is the nodes' etcd lease time to live.
	LeaseTTL time.Duration
	// ReadyTimeout bounds the wait for the router to be ready.
	ReadyTimeout time.Duration
	// StopTimeout bounds each child's graceful stop.
	StopTimeout time.Duration
	// LogLevel is passed to the children.
	LogLevel string
}

// State is what a running local cluster writes to StateDir/up.json for the
// other commands (`moegrid generate` with no --addr) to find it.
type State struct {
	PID             int      `json:"pid"`
	ModelDir        string   `json:"model_dir"`
	Etcd            []string `json:"etcd_endpoints"`
	RouterGRPC      string   `json:"router_grpc"`
	RouterHTTP      string   `json:"router_http"`
	CoordinatorGRPC string   `json:"coordinator_grpc"`
	Logs            string   `json:"logs"`
}

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
// runs until ctx is done; then it stops every child and etcd.
func Run(ctx context.Context, cfg Config, out io.Writer, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Nodes < 1 {
		return fmt.Errorf("up: --nodes %d must be at least 1", cfg.Nodes)
	}
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

	addrs := []*string{&cfg.RouterGRPC, &cfg.RouterHTTP, &cfg.CoordinatorGRPC}
	for _, a := range addrs {
		if *a, err = concreteAddr(*a); err != nil {
			return err
		}
	}
	etcd, endpoint, err := startEtcd(filepath.Join(cfg.StateDir, "etcd"))
	if err != nil {
		return err
	}
	defer func() {
		etcd.Close()
		<-etcd.Err()
	}()

	sup := &supervisor{exe: cfg.Executable, logs: logs, log: log, stopTimeout: cfg.StopTimeout, exits: make(chan *child, cfg.Nodes+2)}
	defer sup.stopAll()
	common := []string{"--etcd-endpoints", endpoint, "--log-level", cfg.LogLevel}
	ttl := cfg.LeaseTTL.String()
	if err := sup.start("coordinator", append([]string{"coordinator", "--id", "coordinator-0",
		"--grpc-addr", cfg.CoordinatorGRPC, "--http-addr", "127.0.0.1:0",
		"--min-replicas", strconv.Itoa(cfg.MinReplicas), "--lease-ttl", ttl}, common...)); err != nil {
		return err
	}
	for i := range cfg.Nodes {
		id := fmt.Sprintf("expert-%d", i)
		if err := sup.start(id, append([]string{"expertnode", "--id", id, "--model", modelDir,
			"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--lease-ttl", ttl}, common...)); err != nil {
			return err
		}
	}
	if err := sup.start("router", append([]string{"router", "--id", "router-0", "--model", modelDir,
		"--grpc-addr", cfg.RouterGRPC, "--http-addr", cfg.RouterHTTP, "--lease-ttl", ttl}, common...)); err != nil {
		return err
	}

	if err := waitReady(ctx, "http://"+cfg.RouterHTTP+"/readyz", cfg.ReadyTimeout, sup); err != nil {
		return fmt.Errorf("up: %w (logs in %s)", err, logs)
	}
	if name, err := sup.exited(); name != "" {
		return fmt.Errorf("up: %s exited: %v (logs in %s)", name, err, logs)
	}
	st := State{
		PID: os.Getpid(), ModelDir: modelDir, Etcd: []string{endpoint},
		RouterGRPC: cfg.RouterGRPC, RouterHTTP: cfg.RouterHTTP, CoordinatorGRPC: cfg.CoordinatorGRPC, Logs: logs,
	}
	if err := writeState(cfg.StateDir, st); err != nil {
		return err
	}
	defer os.Remove(StateFile(cfg.StateDir))

	fmt.Fprintf(out, `moegrid is up: %d expert nodes, a coordinator and a router serving %s

  router gRPC    %s   (moegrid.v1.Generation)
  router HTTP    http://%s   (OpenAI API: /v1/completions, /v1/chat/completions, /v1/models)
  coordinator    %s   (moegrid.v1.Cluster; moegrid nodes --coordinator %s)
  etcd           %s
  logs           %s

Try:
  moegrid generate "The capital of France is"
  curl -s http://%s/v1/completions -d '{"prompt": "Hello", "max_tokens": 16}'

Ctrl-C stops everything.
`, cfg.Nodes, modelDir, cfg.RouterGRPC, cfg.RouterHTTP, cfg.CoordinatorGRPC, cfg.CoordinatorGRPC, endpoint, logs, cfg.RouterHTTP)

	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(out, "stopping…")
			return nil
		case err := <-etcd.Err():
			return fmt.Errorf("up: etcd stopped: %w", err)
		case c := <-sup.exits:
			// Nothing restarts a child here; the cluster carries on
			// without it (replicas, re-placement) and says so.
			fmt.Fprintf(out, "%s exited: %v; see %s\n", c.name, c.err, filepath.Join(logs, c.name+".log"))
		}
	}
}

// ensureModel returns the checkpoint to serve, synthesising the tiny model
// into the cache on first use.
func ensureModel(cfg Config, out io.Writer) (string, error) {
	if cfg.ModelDir != "" {
		return cfg.ModelDir, nil
	}
	dir := filepath.Join(cfg.CacheDir, "models", "tiny-seed1-f32")
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err == nil {
		return dir, nil
	}
	p, err := synth.PresetByName("tiny")
	if err != nil {
		return "", err
	}
	fmt.Fprintf(out, "generating the synthetic tiny model into %s…\n", dir)
	tmp := dir + ".tmp-" + strconv.Itoa(os.Getpid())
	if err := synth.Write(tmp, synth.Options{Preset: p, Seed: 1, DType: safetensors.F32, Shards: 1}); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		if _, serr := os.Stat(filepath.Join(dir, "config.json")); serr == nil {
			return dir, nil // another process generated it first
		}
		return "", fmt.Errorf("up: %w", err)
	}
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

// startEtcd starts a single-member etcd on free loopback ports.
func startEtcd(dir string) (*embed.Etcd, string, error) {
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
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
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

// waitReady polls url until it answers 200, a child exits, or the timeout.
func waitReady(ctx context.Context, url string, timeout time.Duration, sup *supervisor) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	for {
		if name, err := sup.exited(); name != "" {
			return fmt.Errorf("%s exited before the cluster was ready: %v", name, err)
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("router not ready after %v", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// supervisor owns the child processes.
type supervisor struct {
	exe         string
	logs        string
	log         *slog.Logger
	stopTimeout time.Duration

	// exits receives each child that exits while the cluster runs.
	exits chan *child

	mu       sync.Mutex
	children []*child // protected by mu
}

type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done is closed
	logf *os.File
}

func (s *supervisor) start(name string, args []string) error {
	logf, err := os.Create(filepath.Join(s.logs, name+".log"))
	if err != nil {
		return fmt.Errorf("up: %w", err)
	}
	cmd := exec.Command(s.exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("up: start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{}), logf: logf}
	go func() {
		c.err = cmd.Wait()
		logf.Close()
		close(c.done)
		select {
		case s.exits <- c:
		default:
		}
	}()
	s.mu.Lock()
	s.children = append(s.children, c)
	s.mu.Unlock()
	s.log.Debug("started", "child", name, "pid", cmd.Process.Pid)
	return nil
}

// exited returns the name and error of a child that has exited, if any.
func (s *supervisor) exited() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.children {
		select {
		case <-c.done:
			return c.name, fmt.Errorf("%v; last lines: %s", c.err, tail(filepath.Join(s.logs, c.name+".log")))
		default:
		}
	}
	return "", nil
}

// stopAll sends SIGTERM to every child (the router first, so it stops taking
// requests), waits up to stopTimeout, then kills what is left, and waits for
// every child to be gone.
func (s *supervisor) stopAll() {
	s.mu.Lock()
	children := s.children
	s.mu.Unlock()
	for i := len(children) - 1; i >= 0; i-- {
		children[i].cmd.Process.Signal(syscall.SIGTERM)
	}
	timer := time.NewTimer(s.stopTimeout)
	defer timer.Stop()
	for _, c := range children {
		select {
		case <-c.done:
			continue
		case <-timer.C:
		}
		// Out of time: kill whatever is still running.
		for _, k := range children {
			select {
			case <-k.done:
			default:
				s.log.Warn("child did not stop in time; killing it", "child", k.name)
				k.cmd.Process.Kill()
			}
		}
		break
	}
	for _, c := range children {
		<-c.done
	}
}

// tail returns the last lines of a log file.
func tail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 5 {
			lines = lines[1:]
		}
	}
	b, _ := json.Marshal(lines)
	return string(b)
}
