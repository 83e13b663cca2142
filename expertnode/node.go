package expertnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/coordinator/placement"
	"github.com/moegrid/moegrid/internal/mtls"
	"github.com/moegrid/moegrid/internal/pki"
	"github.com/moegrid/moegrid/internal/retry"
	"github.com/moegrid/moegrid/internal/serve"
	"github.com/moegrid/moegrid/model"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// Config configures an expert node.
type Config struct {
	// ID names the node in the cluster; unique, stable across restarts.
	ID string
	// ModelDir is the checkpoint directory (config.json, *.safetensors) or
	// GGUF file.
	ModelDir string
	// EtcdEndpoints are the etcd client URLs.
	EtcdEndpoints []string
	// Prefix is the cluster's etcd key prefix.
	Prefix string
	// GRPCAddr and HTTPAddr are the listen addresses; port 0 picks one.
	GRPCAddr, HTTPAddr string
	// AdvertiseAddr is the gRPC address the router dials; default the bound
	// address.
	AdvertiseAddr string
	// GossipAddr is the memberlist bind address; GossipAdvertise what
	// others reach it at (default: bound).
	GossipAddr, GossipAdvertise string
	// Join lists gossip addresses to join besides those found in etcd.
	Join []string
	// CapacityBytes is the memory this node offers for expert weights.
	CapacityBytes int64
	// Device describes the accelerator (or "cpu").
	Device cluster.Device
	// LeaseTTL is the etcd lease's time to live.
	LeaseTTL time.Duration
	// QueueDepth bounds the Forward calls waiting or running; more are
	// refused with RESOURCE_EXHAUSTED.
	QueueDepth int
	// Workers is the number of Forward calls computed at once.
	Workers int
	// LoadReport is how often live load is written to the node's record.
	LoadReport time.Duration
	// StopTimeout bounds the graceful drain on shutdown.
	StopTimeout time.Duration
	// Security is the node's certificate, the CA it trusts and the gossip
	// keyring, or Insecure. Routers' certificates may call Forward,
	// admins' everything else.
	Security mtls.Security
}

// DefaultConfig returns the local defaults.
func DefaultConfig() Config {
	return Config{
		Prefix:        cluster.DefaultPrefix,
		GRPCAddr:      "127.0.0.1:0",
		HTTPAddr:      "127.0.0.1:0",
		GossipAddr:    "127.0.0.1:0",
		CapacityBytes: 16 << 30,
		Device:        cluster.Device{Kind: "cpu", Name: runtime.GOARCH},
		LeaseTTL:      cluster.DefaultLeaseTTL,
		QueueDepth:    64,
		Workers:       1,
		LoadReport:    5 * time.Second,
		StopTimeout:   10 * time.Second,
	}
}

func (c *Config) validate() error {
	switch {
	case c.ID == "":
		return errors.New("expertnode: an id is required")
	case c.ModelDir == "":
		return errors.New("expertnode: a model directory is required")
	case len(c.EtcdEndpoints) == 0:
		return errors.New("expertnode: etcd endpoints are required")
	case c.CapacityBytes <= 0:
		return fmt.Errorf("expertnode: capacity %d bytes must be positive", c.CapacityBytes)
	case c.QueueDepth < 1 || c.Workers < 1:
		return fmt.Errorf("expertnode: queue depth %d and workers %d must be at least 1", c.QueueDepth, c.Workers)
	}
	if err := c.Security.Validate(true); err != nil {
		return fmt.Errorf("expertnode: %w", err)
	}
	return cluster.ValidateID(c.ID)
}

// Node is a running expert node.
type Node struct {
	cfg     Config
	log     *slog.Logger
	reg     *prometheus.Registry
	model   model.Config
	info    cluster.ModelInfo
	store   shardStore
	metrics *metrics
	svc     *expertService
	servers *serve.Servers
	tls     *mtls.Source // nil when insecure

	loadedBytes atomic.Int64
	// rowsPerSecond holds the float64 bits of the rate at the last report.
	rowsPerSecond atomic.Uint64
}

// New checks the configuration and the checkpoint and opens the listeners;
// Run joins the cluster and serves.
func New(cfg Config, log *slog.Logger, reg *prometheus.Registry) (*Node, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	mc, err := model.LoadConfig(cfg.ModelDir)
	if err != nil {
		return nil, err
	}
	fp, err := model.Fingerprint(cfg.ModelDir)
	if err != nil {
		return nil, err
	}
	perLayer, err := model.CheckpointExpertLayerBytes(cfg.ModelDir, mc)
	if err != nil {
		return nil, err
	}
	n := &Node{
		cfg:     cfg,
		log:     log.With("node", cfg.ID),
		reg:     reg,
		model:   mc,
		info:    ModelInfo(mc, perLayer, fp),
		metrics: newMetrics(reg),
	}
	n.svc = newExpertService(cfg.ID, mc, &n.store, cfg.QueueDepth, cfg.Workers, n.metrics)
	if n.tls, err = cfg.Security.Source(n.log); err != nil {
		return nil, fmt.Errorf("expertnode: %w", err)
	}
	if cfg.Security.Insecure {
		n.log.Warn("running INSECURE: plaintext gRPC, HTTP, etcd and gossip, no identity checks (--insecure)")
	}
	n.servers, err = serve.Listen(serve.Config{
		GRPCAddr: cfg.GRPCAddr, HTTPAddr: cfg.HTTPAddr,
		StopTimeout: cfg.StopTimeout, MaxMessageBytes: 256 << 20,
		TLS: n.tls, Policy: Policy,
	}, reg, n.log)
	if err != nil {
		return nil, err
	}
	moegridv1.RegisterExpertServer(n.servers.GRPC, n.svc)
	return n, nil
}

// Policy is who may call an expert node: routers compute with Forward,
// admins may call everything else.
var Policy = mtls.Policy{Allow: map[string][]pki.Role{
	moegridv1.Expert_Forward_FullMethodName:       {pki.RoleRouter},
	moegridv1.Expert_ForwardStream_FullMethodName: {pki.RoleRouter},
	"/moegrid.v1.Expert/*":                        {pki.RoleAdmin},
}}

// ModelInfo describes a checkpoint for the placement: its shape, the
// stored bytes of one expert in one layer, and its fingerprint.
func ModelInfo(c model.Config, bytesPerExpertLayer int64, fingerprint string) cluster.ModelInfo {
	return cluster.ModelInfo{
		Shape: placement.Model{
			Experts:             c.NumLocalExperts,
			Layers:              c.NumHiddenLayers,
			BytesPerExpertLayer: bytesPerExpertLayer,
		},
		Fingerprint: fingerprint,
	}
}

// GRPCAddr is the bound gRPC address.
func (n *Node) GRPCAddr() string { return n.servers.GRPCAddr() }

// HTTPAddr is the bound HTTP address.
func (n *Node) HTTPAddr() string { return n.servers.HTTPAddr() }

// Run joins the cluster, follows the placement and serves until ctx is
// done; then it drains: NOT_SERVING, state draining, in-flight calls
// finished, lease revoked.
func (n *Node) Run(ctx context.Context) error {
	defer n.store.swap(nil)
	etcdOpts, etcdSrc, err := cluster.EtcdSecurity(n.cfg.Security, n.tls, n.cfg.EtcdEndpoints, n.log)
	if err != nil {
		return err
	}
	keyring, err := n.cfg.Security.GossipKeyring()
	if err != nil {
		return err
	}
	cli, err := cluster.NewEtcdClient(n.cfg.EtcdEndpoints, etcdOpts...)
	if err != nil {
		return err
	}
	defer cli.Close()
	st, err := cluster.Connect(ctx, cli, n.cfg.Prefix, n.log)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for etcd
		}
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	advertise := n.cfg.AdvertiseAddr
	if advertise == "" {
		advertise = n.GRPCAddr()
	}
	gcfg := cluster.DefaultGossipConfig(n.cfg.ID, cluster.RoleNode)
	gcfg.BindAddr = n.cfg.GossipAddr
	gcfg.AdvertiseAddr = n.cfg.GossipAdvertise
	gcfg.Join = n.cfg.Join
	gcfg.Keyring = keyring
	gcfg.Seeds = cluster.FollowGossipSeeds(ctx, st)
	gcfg.Meta = func() cluster.MemberMeta {
		l := n.liveLoad()
		return cluster.MemberMeta{GRPCAddr: advertise, Load: &l}
	}
	gossip, err := cluster.StartGossip(gcfg, n.log)
	if err != nil {
		return err
	}
	defer gossip.Close()

	reg, err := st.Register(ctx, cluster.NodeRecord{
		ID:            n.cfg.ID,
		GRPCAddr:      advertise,
		GossipAddr:    gossip.Addr(),
		HTTPAddr:      n.HTTPAddr(),
		CapacityBytes: n.cfg.CapacityBytes,
		Device:        n.cfg.Device,
		Model:         n.info,
		Insecure:      n.cfg.Security.Insecure,
	}, cluster.LeaseOptions{TTL: n.cfg.LeaseTTL, Logger: n.log})
	if err != nil {
		return err
	}
	defer reg.Close()
	n.log.Info("expert node up", "grpc", advertise, "http", n.HTTPAddr(), "gossip", gossip.Addr(), "fingerprint", n.info.Fingerprint)

	serveCtx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServing()
	g, gctx := errgroup.WithContext(ctx)
	serveErr := make(chan error, 1)
	go func() { serveErr <- n.servers.Run(serveCtx) }()
	sourcesDone := make(chan error, 1)
	go func() { sourcesDone <- mtls.RunSources(serveCtx, n.tls, etcdSrc) }()
	g.Go(func() error { return n.follow(gctx, st, reg) })
	g.Go(func() error { return n.reportLoad(gctx, reg) })
	err = g.Wait()

	// Drain: refuse new work so routers move to replicas, tell the
	// coordinator, let calls in flight finish, then leave.
	n.svc.drain()
	n.servers.SetReady(false, moegridv1.Expert_ServiceDesc.ServiceName)
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	reg.Update(dctx, func(r *cluster.NodeRecord) { r.State = cluster.StateDraining })
	cancel()
	stopServing()
	if serr := <-serveErr; serr != nil && err == nil {
		err = serr
	}
	<-sourcesDone
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		err = nil
	}
	return err
}

// follow loads the shards of each new placement and reports them loaded. A
// load that fails (a file not there yet, a short read) is retried with a
// doubling delay until it succeeds or a new placement replaces it.
func (n *Node) follow(ctx context.Context, st *cluster.Store, reg *cluster.Registration) error {
	var (
		loaded  []placement.Shard
		first   = true
		pending *cluster.PlacementRecord // the newest placement not yet loaded
		retryC  <-chan time.Time
		delay   = retry.Delay{Min: loadRetryMin, Max: loadRetryMax}
	)
	placements := st.WatchPlacement(ctx)
	for {
		select {
		case rec, ok := <-placements:
			if !ok {
				return ctx.Err()
			}
			if rec.Fingerprint != "" && rec.Fingerprint != n.info.Fingerprint {
				n.log.Warn("placement is for another checkpoint; ignoring it", "placement", rec.Fingerprint, "ours", n.info.Fingerprint)
				continue
			}
			if want := rec.ShardsOf(n.cfg.ID); !first && slices.Equal(want, loaded) {
				pending, retryC = nil, nil
				continue
			}
			pending = &rec
			delay.Reset()
		case <-retryC:
		case <-ctx.Done():
			return ctx.Err()
		}
		if pending == nil {
			continue
		}
		want := pending.ShardsOf(n.cfg.ID)
		if err := n.loadShards(want); err != nil {
			wait := delay.Next()
			n.metrics.loadFailures.Inc()
			n.log.Error("loading shards failed; retrying", "shards", want, "retry_in", wait, "err", err)
			retryC = time.After(wait)
			continue
		}
		loaded, first, retryC = want, false, nil
		n.log.Info("shards loaded", "version", pending.Version, "shards", fmt.Sprint(want), "bytes", n.loadedBytes.Load())
		pending = nil
		if err := reg.Update(ctx, func(r *cluster.NodeRecord) {
			r.Loaded = slices.Clone(want)
			r.State = cluster.StateReady
		}); err != nil {
			n.log.Warn("reporting loaded shards failed; the heartbeat retries", "err", err)
		}
		n.servers.SetReady(true, moegridv1.Expert_ServiceDesc.ServiceName)
	}
}

// The delays between retries of a failed shard load.
const (
	loadRetryMin = 500 * time.Millisecond
	loadRetryMax = 30 * time.Second
)

// loadShards maps the experts of shards from the checkpoint and swaps them in;
// calls in flight finish on the old set.
func (n *Node) loadShards(shards []placement.Shard) error {
	set, err := model.LoadExperts(n.cfg.ModelDir, n.model, func(layer, expert int) bool {
		for _, s := range shards {
			if s.Expert == expert && layer >= s.First && layer < s.End {
				return true
			}
		}
		return false
	})
	if err != nil {
		return err
	}
	n.loadedBytes.Store(set.Bytes())
	n.metrics.loadedBytes.Set(float64(set.Bytes()))
	n.metrics.shards.Set(float64(set.Len()))
	n.store.swap(set)
	return nil
}
