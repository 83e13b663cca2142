package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/moegrid/moegrid/internal/up"
	"github.com/moegrid/moegrid/router"
)

// defaultStateDir is where `moegrid up` keeps its state and where `moegrid
// generate` looks for it.
func defaultStateDir() string {
	if dir, err := os.UserCacheDir(); err == nil {
		return filepath.Join(dir, "moegrid", "up")
	}
	return filepath.Join(os.TempDir(), "moegrid-up")
}

func defaultCacheDir() string {
	if dir, err := os.UserCacheDir(); err == nil {
		return filepath.Join(dir, "moegrid")
	}
	return filepath.Join(os.TempDir(), "moegrid")
}

func readUpState() (up.State, error) {
	dir := os.Getenv("MOEGRID_STATE_DIR")
	if dir == "" {
		dir = defaultStateDir()
	}
	st, err := up.ReadState(dir)
	if err != nil {
		return st, err
	}
	// A `moegrid up` that was killed leaves its state behind; its
	// addresses would only give "connection refused".
	if !st.Running() {
		return st, fmt.Errorf("the `moegrid up` of %s (pid %d) is not running", up.StateFile(dir), st.PID)
	}
	return st, nil
}

// routerAddrs splits a comma-separated --addr into router addresses, or
// with addr empty returns the router of the running `moegrid up`.
func routerAddrs(addr string) ([]string, error) {
	if addr == "" {
		st, err := readUpState()
		if err != nil {
			return nil, fmt.Errorf("no --addr given and no `moegrid up` found: %w", err)
		}
		return []string{st.RouterGRPC}, nil
	}
	var addrs []string
	for _, a := range strings.Split(addr, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			return nil, fmt.Errorf("--addr %q: an empty address in the list", addr)
		}
		addrs = append(addrs, a)
	}
	return addrs, nil
}

func newUpCmd() *cobra.Command {
	cfg := up.Config{
		CacheDir:        defaultCacheDir(),
		StateDir:        defaultStateDir(),
		Nodes:           8,
		Coordinators:    2,
		MinReplicas:     1,
		RouterGRPC:      "127.0.0.1:7400",
		RouterHTTP:      "127.0.0.1:8400",
		CoordinatorGRPC: "127.0.0.1:7300",
		LeaseTTL:        5 * time.Second,
		ReadyTimeout:    2 * time.Minute,
		StopTimeout:     15 * time.Second,
		Restart:         up.Backoff{Min: 500 * time.Millisecond, Max: 30 * time.Second, Reset: time.Minute},
		EtcdCompaction:  5 * time.Minute,
	}
	cmd := &cobra.Command{
		Use:   "up [--model DIR]",
		Short: "Run a whole cluster on this machine: etcd, 2 coordinators, 8 expert nodes and a router",
		Long: `Run a whole cluster on this machine: an embedded etcd, --coordinators
coordinator replicas (one leads, elected in etcd), --nodes expert nodes and
a router, each a child process of this one, on loopback.

A child that dies once the cluster is ready is started again after
--restart-backoff, doubling with each death that follows a run shorter than
--restart-reset, up to --restart-backoff-max; each exit and restart is
printed. A child that dies before the cluster is ready fails the start.
The embedded etcd compacts history older than --etcd-compaction.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(cmd)
			if err != nil {
				return err
			}
			if cfg.Executable, err = os.Executable(); err != nil {
				return err
			}
			cfg.LogLevel, _ = cmd.Flags().GetString("log-level")
			return up.Run(cmd.Context(), cfg, cmd.OutOrStdout(), log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.ModelDir, "model", "", "checkpoint directory or GGUF file (default: the built-in demo model, trained on the King James Bible)")
	f.StringVar(&cfg.CacheDir, "cache-dir", cfg.CacheDir, "where generated models are kept")
	f.StringVar(&cfg.StateDir, "state-dir", cfg.StateDir, "etcd data, logs and the state file that moegrid generate reads (also MOEGRID_STATE_DIR)")
	f.IntVar(&cfg.Nodes, "nodes", cfg.Nodes, "number of expert nodes")
	f.IntVar(&cfg.Coordinators, "coordinators", cfg.Coordinators, "number of coordinator replicas (one leads)")
	f.IntVar(&cfg.MinReplicas, "min-replicas", cfg.MinReplicas, "minimum replicas of every expert")
	f.StringVar(&cfg.RouterGRPC, "router-grpc-addr", cfg.RouterGRPC, "router gRPC address (port 0 picks one)")
	f.StringVar(&cfg.RouterHTTP, "router-http-addr", cfg.RouterHTTP, "router HTTP address (port 0 picks one)")
	f.StringVar(&cfg.APIKeysFile, "api-keys", "", "the router's API key file (see moegrid keys; default: no authentication)")
	f.IntVar(&cfg.MaxExplainTokens, "max-explain-tokens", router.DefaultMaxExplainTokens, "the router's --max-explain-tokens: most positions, prompt tokens plus max_tokens, a request with explain may ask for")
	f.StringVar(&cfg.CoordinatorGRPC, "coordinator-addr", cfg.CoordinatorGRPC, "coordinator gRPC address (port 0 picks one)")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", cfg.LeaseTTL, "etcd lease time to live of the nodes")
	f.DurationVar(&cfg.ReadyTimeout, "ready-timeout", cfg.ReadyTimeout, "how long to wait for the cluster to be ready")
	f.DurationVar(&cfg.StopTimeout, "stop-timeout", cfg.StopTimeout, "how long children get to stop before they are killed")
	f.DurationVar(&cfg.Restart.Min, "restart-backoff", cfg.Restart.Min, "delay before a dead child is restarted the first time")
	f.DurationVar(&cfg.Restart.Max, "restart-backoff-max", cfg.Restart.Max, "cap on the restart delay, which doubles with each quick death")
	f.DurationVar(&cfg.Restart.Reset, "restart-reset", cfg.Restart.Reset, "a child that ran this long before dying is restarted after --restart-backoff again")
	f.BoolVar(&cfg.Insecure, "insecure", false, "run every child in plaintext with no identity checks (default: mutual TLS with a CA kept in --state-dir/tls)")
	f.DurationVar(&cfg.EtcdCompaction, "etcd-compaction", cfg.EtcdCompaction, "the embedded etcd compacts revisions older than this, this often")
	return cmd
}
