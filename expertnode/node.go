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
	"google.golang.org/grpc"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/internal/grpcerr"
	"github.com/moegrid/moegrid/internal/mtls"
	"github.com/moegrid/moegrid/internal/pki"
	"github.com/moegrid/moegrid/internal/retry"
	"github.com/moegrid/moegrid/internal/serve"
	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/placement"
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

// DefaultConfig returns the local defaults, which are also the command
// line's: fixed loopback ports for the servers, a free one for gossip.
func DefaultConfig() Config {
	return Config{
		ID:            "expert-0",
		Prefix:        cluster.DefaultPrefix,
		GRPCAddr:      "127.0.0.1:7100",
		HTTPAddr:      "127.0.0.1:9100",
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

// validate reports every problem with the configuration at once.
func (c *Config) validate() error {
	var errs []error
	if err := cluster.ValidateID(c.ID); err != nil {
		errs = append(errs, fmt.Errorf("id: %w", err))
	}
	if c.ModelDir == "" {
		errs = append(errs, errors.New("a model directory is required"))
	}
	if len(c.EtcdEndpoints) == 0 {
		errs = append(errs, errors.New("etcd endpoints are required"))
	}
	if _, err := cluster.NewKeys(c.Prefix); err != nil {
		errs = append(errs, fmt.Errorf("prefix: %w", err))
	}
	if c.CapacityBytes <= 0 {
		errs = append(errs, fmt.Errorf("capacity %d bytes must be positive", c.CapacityBytes))
	}
	if c.QueueDepth < 1 || c.Workers < 1 {
		errs = append(errs, fmt.Errorf("queue depth %d and workers %d must be at least 1", c.QueueDepth, c.Workers))
	}
	if c.LoadReport <= 0 {
		errs = append(errs, fmt.Errorf("load report interval %v must be positive", c.LoadReport))
	}
	if err := c.Security.Validate(true); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Policy is who may call an expert node: routers compute with Forward,
// admins may call everything else.
var Policy = mtls.Policy{Allow: map[string][]pki.Role{
	moegridv1.Expert_Forward_FullMethodName:       {pki.RoleRouter},
	moegridv1.Expert_ForwardStream_FullMethodName: {pki.RoleRouter},
	"/moegrid.v1.Expert/*":                        {pki.RoleAdmin},
}}

// Node is one expert node. Build it with New and run it with Run; its
// accessors are safe for concurrent use.
type Node struct {
	cfg     Config
	log     *slog.Logger
	reg     prometheus.Registerer
	metrics *metrics

	running atomic.Bool
	ready   chan struct{}

	// Set by Run before the servers start, read-only afterwards.
	model   model.Config
	info    cluster.ModelInfo
	store   shardStore
	svc     *expertService
	servers *serve.Servers
	// Set before ready is closed, read-only afterwards.
	grpcAddr, httpAddr string

	loadedBytes atomic.Int64
	// rowsPerSecond holds the float64 bits of the rate at the last report.
	rowsPerSecond atomic.Uint64
}

// New validates cfg, reporting every problem at once, and builds a node
// whose metrics are registered with reg (nil: a private registry); /metrics
// serves reg if it is also a prometheus.Gatherer, as *prometheus.Registry
// is. A nil logger discards. New reads no files and binds nothing: Run does.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("expertnode: config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	return &Node{
		cfg:     cfg,
		log:     log.With("node", cfg.ID),
		reg:     reg,
		metrics: newMetrics(reg),
		ready:   make(chan struct{}),
	}, nil
}

// readCheckpoint reads the checkpoint's configuration, expert sizes and
// fingerprint; it maps no weights.
func (n *Node) readCheckpoint() error {
	mc, err := model.LoadConfig(n.cfg.ModelDir)
	if err != nil {
		return fmt.Errorf("expertnode: %w", err)
	}
	fp, err := model.Fingerprint(n.cfg.ModelDir)
	if err != nil {
		return fmt.Errorf("expertnode: %w", err)
	}
	perLayer, err := model.CheckpointExpertLayerBytes(n.cfg.ModelDir, mc)
	if err != nil {
		return fmt.Errorf("expertnode: %w", err)
	}
	n.model, n.info = mc, ModelInfo(mc, perLayer, fp)
	return nil
}

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

// Ready is closed once Run serves; the address accessors are valid from
// then on.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// GRPCAddr is the bound gRPC address (after Ready).
func (n *Node) GRPCAddr() string { return n.grpcAddr }

// HTTPAddr is the bound HTTP address (after Ready).
func (n *Node) HTTPAddr() string { return n.httpAddr }

// Run reads the checkpoint, binds the listeners, joins the cluster, follows
// the placement and serves until ctx is done; then it drains: NOT_SERVING,
// state draining, in-flight calls finished, lease revoked. It returns nil
// when ctx ends it, also while it still waits for etcd, and releases
// everything it acquired on every return. Run may be called once.
func (n *Node) Run(ctx context.Context) error {
	if !n.running.CompareAndSwap(false, true) {
		return errors.New("expertnode: Run called twice")
	}
	if err := n.readCheckpoint(); err != nil {
		return err
	}
	defer n.store.swap(nil)
	src, err := n.cfg.Security.Source(n.log)
	if err != nil {
		return fmt.Errorf("expertnode: %w", err)
	}
	if n.cfg.Security.Insecure {
		n.log.Warn("running INSECURE: plaintext gRPC, HTTP, etcd and gossip, no identity checks (--insecure)")
	}
	etcdOpts, etcdSrc, err := cluster.EtcdSecurity(n.cfg.Security, src, n.cfg.EtcdEndpoints, n.log)
	if err != nil {
		return fmt.Errorf("expertnode: %w", err)
	}
	keyring, err := n.cfg.Security.GossipKeyring()
	if err != nil {
		return fmt.Errorf("expertnode: %w", err)
	}
	boundary := grpcerr.New(errorCodes, n.log)
	n.svc = newExpertService(n.cfg.ID, n.model, &n.store, n.cfg.QueueDepth, n.cfg.Workers, n.metrics, boundary)
	servers, err := serve.New(serve.Config{
		GRPCAddr: n.cfg.GRPCAddr, HTTPAddr: n.cfg.HTTPAddr,
		StopTimeout: n.cfg.StopTimeout, MaxMessageBytes: 256 << 20,
		UnaryInterceptors:  []grpc.UnaryServerInterceptor{boundary.Unary()},
		StreamInterceptors: []grpc.StreamServerInterceptor{boundary.Stream()},
		TLS:                src, Policy: Policy,
	}, n.reg, n.log)
	if err != nil {
		return fmt.Errorf("expertnode: %w", err)
	}
	moegridv1.RegisterExpertServer(servers.GRPC, n.svc)
	if err := servers.Bind(); err != nil {
		return fmt.Errorf("expertnode: %w", err)
	}
	defer servers.Close()
	n.servers = servers

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	advertise := n.cfg.AdvertiseAddr
	if advertise == "" {
		advertise = servers.GRPCAddr()
	}
	gcfg := cluster.DefaultGossipConfig(n.cfg.ID, cluster.RoleNode)
	gcfg.BindAddr = n.cfg.GossipAddr
	gcfg.AdvertiseAddr = n.cfg.GossipAdvertise
	gcfg.Join = n.cfg.Join
	gcfg.Keyring = keyring
	gcfg.Meta = func() cluster.MemberMeta {
		l := n.liveLoad()
		return cluster.MemberMeta{GRPCAddr: advertise, Load: &l}
	}
	member, err := cluster.Join(ctx, cluster.JoinConfig{EtcdEndpoints: n.cfg.EtcdEndpoints, Prefix: n.cfg.Prefix, Etcd: etcdOpts, Gossip: gcfg}, n.log)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for etcd
		}
		return fmt.Errorf("expertnode: %w", err)
	}
	defer member.Close()
	st, gossip := member.Store, member.Gossip

	reg, err := st.Register(ctx, cluster.NodeRecord{
		ID:            n.cfg.ID,
		GRPCAddr:      advertise,
		GossipAddr:    gossip.Addr(),
		HTTPAddr:      servers.HTTPAddr(),
		CapacityBytes: n.cfg.CapacityBytes,
		Device:        n.cfg.Device,
		Model:         n.info,
		Insecure:      n.cfg.Security.Insecure,
	}, cluster.LeaseOptions{TTL: n.cfg.LeaseTTL, Logger: n.log})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("expertnode: %w", err)
	}
	defer reg.Close()
	n.grpcAddr, n.httpAddr = servers.GRPCAddr(), servers.HTTPAddr()
	n.log.Info("expert node up", "grpc", advertise, "http", n.httpAddr, "gossip", gossip.Addr(), "fingerprint", n.info.Fingerprint)
	close(n.ready)

	serveCtx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServing()
	g, gctx := errgroup.WithContext(ctx)
	serveErr := make(chan error, 1)
	go func() { serveErr <- servers.Run(serveCtx) }()
	sourcesDone := make(chan error, 1)
	go func() { sourcesDone <- mtls.RunSources(serveCtx, src, etcdSrc) }()
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
		failed  int // load attempts failed since the last that succeeded
	)
	// setLoadError shows the last failure (nil: none) in the node's record
	// and metrics, for `moegrid nodes` and alerts.
	setLoadError := func(e *cluster.LoadError) {
		n.metrics.loadFailing.Set(float64(failed))
		if err := reg.Update(ctx, func(r *cluster.NodeRecord) { r.LoadError = e }); err != nil && ctx.Err() == nil {
			n.log.Warn("reporting the load error failed", "err", err)
		}
	}
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
				if failed > 0 {
					// Back to the shards it serves: nothing is failing.
					failed = 0
					setLoadError(nil)
				}
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
			failed++
			n.log.Error("loading shards failed; retrying", "shards", want, "retry_in", wait, "attempts", failed, "err", err)
			setLoadError(&cluster.LoadError{Message: cluster.TruncateUTF8(err.Error(), cluster.MaxLoadErrorBytes), Time: time.Now(), Attempts: failed})
			retryC = time.After(wait)
			continue
		}
		loaded, first, retryC = want, false, nil
		failed = 0
		n.metrics.loadFailing.Set(0)
		n.log.Info("shards loaded", "version", pending.Version, "shards", fmt.Sprint(want), "bytes", n.loadedBytes.Load())
		pending = nil
		if err := reg.Update(ctx, func(r *cluster.NodeRecord) {
			r.Loaded = slices.Clone(want)
			r.State = cluster.StateReady
			r.LoadError = nil
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
