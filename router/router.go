package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/internal/apikey"
	"github.com/moegrid/moegrid/internal/mtls"
	"github.com/moegrid/moegrid/internal/pki"
	"github.com/moegrid/moegrid/internal/serve"
	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/tokenizer"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// Config configures a router.
type Config struct {
	// ID names the router in the cluster (gossip, load reports).
	ID string
	// ModelDir is the checkpoint directory or GGUF file; the router maps
	// its non-expert weights and reads its tokenizer.
	ModelDir string
	// ModelName is the model's name in the HTTP API; default the
	// directory's base name.
	ModelName string
	// EtcdEndpoints are the etcd client URLs; Prefix the cluster's key
	// prefix.
	EtcdEndpoints []string
	Prefix        string
	// GRPCAddr and HTTPAddr are the listen addresses; port 0 picks one.
	GRPCAddr, HTTPAddr string
	// GossipAddr is the memberlist bind address, GossipAdvertise what
	// others reach it at; Join lists more gossip addresses to join.
	GossipAddr, GossipAdvertise string
	Join                        []string
	// LeaseTTL is the time to live of the router's load record.
	LeaseTTL time.Duration
	// Dispatch tunes the expert calls; Scheduler the batching.
	Dispatch  DispatchConfig
	Scheduler SchedulerConfig
	// DefaultMaxTokens applies to requests that give no max_tokens.
	DefaultMaxTokens int
	// RequestTimeout is the deadline of a request whose client set none;
	// 0 leaves such requests unbounded.
	RequestTimeout time.Duration
	// LoadReport is how often the routing load goes to etcd.
	LoadReport time.Duration
	// StopTimeout bounds the graceful stop.
	StopTimeout time.Duration
	// Security is the router's certificate (served to clients, shown to
	// expert nodes), the CA it trusts and the gossip keyring, or Insecure.
	// Client, admin and router certificates may call Generation.
	Security mtls.Security
	// APIKeysFile is the key file (see package apikey) that clients of the
	// Generate and /v1/ APIs authenticate against, reloaded when it
	// changes; empty lets every client generate.
	APIKeysFile string
}

// DefaultConfig returns the local defaults.
func DefaultConfig() Config {
	return Config{
		ID:               "router-0",
		Prefix:           cluster.DefaultPrefix,
		GRPCAddr:         "127.0.0.1:0",
		HTTPAddr:         "127.0.0.1:0",
		GossipAddr:       "127.0.0.1:0",
		LeaseTTL:         cluster.DefaultLeaseTTL,
		Dispatch:         DefaultDispatchConfig(),
		Scheduler:        DefaultSchedulerConfig(),
		DefaultMaxTokens: 128,
		RequestTimeout:   10 * time.Minute,
		LoadReport:       5 * time.Second,
		StopTimeout:      10 * time.Second,
	}
}

func (c *Config) validate() error {
	s := c.Scheduler
	switch {
	case c.ModelDir == "":
		return errors.New("router: a model directory is required")
	case len(c.EtcdEndpoints) == 0:
		return errors.New("router: etcd endpoints are required")
	case s.MaxBatchTokens < 1 || s.PrefillChunk < 1 || s.MaxRunning < 1 || s.MaxWaiting < 1:
		return fmt.Errorf("router: scheduler limits must be at least 1: %+v", s)
	case c.DefaultMaxTokens < 1:
		return fmt.Errorf("router: default max tokens %d must be at least 1", c.DefaultMaxTokens)
	case c.Dispatch.WaitForHolder <= 0:
		return fmt.Errorf("router: wait for holder %v must be positive", c.Dispatch.WaitForHolder)
	}
	if err := c.Security.Validate(true); err != nil {
		return fmt.Errorf("router: %w", err)
	}
	return cluster.ValidateID(c.ID)
}

// Policy is who may call a router: clients, admins and other routers
// generate.
var Policy = mtls.Policy{Allow: map[string][]pki.Role{
	"/" + moegridv1.Generation_ServiceDesc.ServiceName + "/*": {pki.RoleClient, pki.RoleAdmin, pki.RoleRouter},
}}

// Router is a running router.
type Router struct {
	cfg         Config
	log         *slog.Logger
	model       *model.Model
	tok         *tokenizer.Tokenizer
	fingerprint string
	metrics     *metrics
	reg         prometheus.Registerer // for the dispatcher Run makes
	gossipTopo  *clusterTopology
	dispatcher  *Dispatcher
	// experts publishes dispatcher, once Run has made it, to Experts.
	experts atomic.Pointer[Dispatcher]
	sched   *Scheduler
	servers *serve.Servers
	tls     *mtls.Source // nil when insecure
	// keys authenticates clients; nil when Config.APIKeysFile is empty.
	keys    *apikey.Guard
	seeds   seedSource
	started time.Time

	// routed counts tokens routed to each expert (all layers) since the last
	// load report.
	routed []atomic.Uint64
}

// New loads the model and tokenizer and opens the listeners; Run joins the
// cluster and serves.
func New(cfg Config, log *slog.Logger, reg *prometheus.Registry) (*Router, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.ModelName == "" {
		cfg.ModelName = filepath.Base(filepath.Clean(cfg.ModelDir))
	}
	m, err := model.Load(cfg.ModelDir)
	if err != nil {
		return nil, err
	}
	tok, err := model.LoadTokenizer(cfg.ModelDir)
	if err != nil {
		m.Close()
		return nil, err
	}
	if tok.VocabSize() > m.Config.VocabSize {
		m.Close()
		return nil, fmt.Errorf("router: tokenizer has %d tokens, the model %d", tok.VocabSize(), m.Config.VocabSize)
	}
	fp, err := model.Fingerprint(cfg.ModelDir)
	if err != nil {
		m.Close()
		return nil, err
	}
	r := &Router{
		cfg:         cfg,
		log:         log.With("router", cfg.ID),
		model:       m,
		tok:         tok,
		fingerprint: fp,
		metrics:     newMetrics(reg),
		reg:         reg,
		seeds:       newSeedSource(),
		started:     time.Now(),
		routed:      make([]atomic.Uint64, m.Config.NumLocalExperts),
	}
	if r.tls, err = cfg.Security.Source(r.log); err != nil {
		m.Close()
		return nil, fmt.Errorf("router: %w", err)
	}
	if cfg.Security.Insecure {
		r.log.Warn("running INSECURE: plaintext gRPC, HTTP, etcd and gossip, no identity checks (--insecure)")
	}
	r.cfg.Dispatch.TLS = r.tls
	scfg := serve.Config{
		GRPCAddr: cfg.GRPCAddr, HTTPAddr: cfg.HTTPAddr, StopTimeout: cfg.StopTimeout,
		TLS: r.tls, Policy: Policy,
	}
	if cfg.APIKeysFile == "" {
		r.log.Warn("no API keys: every client may generate")
	} else {
		if r.keys, err = apikey.New(apikey.Config{File: cfg.APIKeysFile}, r.log, reg); err != nil {
			m.Close()
			return nil, err
		}
		r.log.Info("API keys loaded", "file", cfg.APIKeysFile, "keys", r.keys.Len())
		scfg.UnaryInterceptors = []grpc.UnaryServerInterceptor{r.keys.UnaryServerInterceptor(grpcAPI)}
		scfg.StreamInterceptors = []grpc.StreamServerInterceptor{r.keys.StreamServerInterceptor(grpcAPI)}
	}
	r.servers, err = serve.Listen(scfg, reg, r.log)
	if err != nil {
		m.Close()
		return nil, err
	}
	moegridv1.RegisterGenerationServer(r.servers.GRPC, &generationService{r: r})
	r.httpHandler(r.servers.Mux)
	return r, nil
}

// Experts returns the remote experts the router dispatches to, or nil before
// Run has joined the cluster. With the model's non-expert weights they run
// the whole model through the cluster: evaluation and tests use it to compare
// the cluster with an in-process model.
func (r *Router) Experts() model.Experts {
	if d := r.experts.Load(); d != nil {
		return d
	}
	return nil
}

// GRPCAddr is the bound gRPC address.
func (r *Router) GRPCAddr() string { return r.servers.GRPCAddr() }

// HTTPAddr is the bound HTTP address.
func (r *Router) HTTPAddr() string { return r.servers.HTTPAddr() }

// Run joins the cluster and serves until ctx is done.
func (r *Router) Run(ctx context.Context) error {
	defer r.model.Close()
	etcdOpts, etcdSrc, err := cluster.EtcdSecurity(r.cfg.Security, r.tls, r.cfg.EtcdEndpoints, r.log)
	if err != nil {
		return err
	}
	keyring, err := r.cfg.Security.GossipKeyring()
	if err != nil {
		return err
	}
	cli, err := cluster.NewEtcdClient(r.cfg.EtcdEndpoints, etcdOpts...)
	if err != nil {
		return err
	}
	defer cli.Close()
	st, err := cluster.Connect(ctx, cli, r.cfg.Prefix, r.log)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for etcd
		}
		return err
	}
	gcfg := cluster.DefaultGossipConfig(r.cfg.ID, cluster.RoleRouter)
	gcfg.BindAddr = r.cfg.GossipAddr
	gcfg.AdvertiseAddr = r.cfg.GossipAdvertise
	gcfg.Join = r.cfg.Join
	gcfg.Keyring = keyring
	gcfg.Seeds = cluster.FollowGossipSeeds(ctx, st)
	gossip, err := cluster.StartGossip(gcfg, r.log)
	if err != nil {
		return err
	}
	defer gossip.Close()

	r.gossipTopo = newClusterTopology(r.fingerprint, gossip)
	r.dispatcher = NewDispatcher(r.cfg.Dispatch, r.gossipTopo, r.model.Config.HiddenSize, r.log, r.reg)
	defer r.dispatcher.Close()
	r.gossipTopo.onChange = r.dispatcher.Retain
	r.experts.Store(r.dispatcher)
	r.sched = NewScheduler(r.cfg.Scheduler, r.model, r.dispatcher, r.log, r.metrics, r.countRoutes)

	loads, err := st.ReportLoad(ctx, cluster.LoadRecord{RouterID: r.cfg.ID, Fingerprint: r.fingerprint, TokensPerSecond: make([]float64, r.model.Config.NumLocalExperts)},
		cluster.LeaseOptions{TTL: r.cfg.LeaseTTL, Logger: r.log})
	if err != nil {
		return err
	}
	defer loads.Close()

	r.log.Info("router up", "grpc", r.GRPCAddr(), "http", r.HTTPAddr(), "gossip", gossip.Addr(), "model", r.cfg.ModelName, "fingerprint", r.fingerprint)
	g, gctx := errgroup.WithContext(ctx)
	// The scheduler outlives ctx until the servers have stopped: their
	// graceful stop waits for the streams in flight, which need it to
	// finish (within StopTimeout) instead of failing at once.
	schedCtx, stopSched := context.WithCancel(context.WithoutCancel(gctx))
	g.Go(func() error { r.gossipTopo.run(gctx, st); return nil })
	g.Go(func() error { return r.sched.Run(schedCtx) })
	g.Go(func() error { defer stopSched(); return r.servers.Run(gctx) })
	g.Go(func() error { r.followReadiness(gctx); return nil })
	g.Go(func() error { r.reportLoad(gctx, loads); return nil })
	g.Go(func() error { return mtls.RunSources(gctx, r.tls, etcdSrc) })
	if r.keys != nil {
		g.Go(func() error { r.keys.Run(gctx); return nil })
	}
	return g.Wait()
}

// grpcAPI names the API key permission each gRPC method needs; health and
// reflection need none.
func grpcAPI(fullMethod string) string {
	if fullMethod == moegridv1.Generation_Generate_FullMethodName {
		return apikey.APIGenerate
	}
	return ""
}

// followReadiness is ready while every expert of every layer has a holder.
func (r *Router) followReadiness(ctx context.Context) {
	for {
		changed := r.gossipTopo.Changed()
		ready := r.gossipTopo.Complete(r.model.Config.NumLocalExperts, r.model.Config.NumHiddenLayers)
		r.servers.SetReady(ready, moegridv1.Generation_ServiceDesc.ServiceName)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// countRoutes adds a step's routes to the load statistics.
func (r *Router) countRoutes(routes [][]model.Route) {
	counts := make([]uint64, len(r.routed))
	for _, layer := range routes {
		for _, rt := range layer {
			for _, e := range rt.Experts {
				counts[e]++
			}
		}
	}
	for e, n := range counts {
		if n > 0 {
			r.routed[e].Add(n)
			r.metrics.expertRows.WithLabelValues(strconv.Itoa(e)).Add(float64(n))
		}
	}
}

// reportLoad publishes the routing rate per expert (rows per second, all
// layers) for the coordinator's replica choice.
func (r *Router) reportLoad(ctx context.Context, loads *cluster.LoadReporter) {
	t := time.NewTicker(r.cfg.LoadReport)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			rates := make([]float64, len(r.routed))
			for e := range r.routed {
				rates[e] = float64(r.routed[e].Swap(0)) / now.Sub(last).Seconds()
			}
			last = now
			if err := loads.Set(rates); err != nil {
				r.log.Debug("load report failed", "err", err)
			}
		}
	}
}

// seedSource draws sampling seeds for requests that give none.
type seedSource struct {
	mu  sync.Mutex
	rng *rand.Rand // protected by mu
}

func newSeedSource() seedSource {
	return seedSource{rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
}

func (s *seedSource) Next() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rng.Uint64()
}
