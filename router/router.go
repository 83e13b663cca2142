package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/internal/apikey"
	"github.com/moegrid/moegrid/internal/grpcerr"
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
	// MaxExplainTokens is the most positions, prompt tokens plus
	// max_tokens, that one sequence may ask to explain; a request past it
	// is invalid. 0 means DefaultMaxExplainTokens.
	MaxExplainTokens int
	// RequestTimeout is the deadline of a request whose client set none;
	// 0 leaves such requests unbounded.
	RequestTimeout time.Duration
	// LoadReport is how often the routing load goes to etcd.
	LoadReport time.Duration
	// StopTimeout bounds the graceful stop.
	StopTimeout time.Duration
	// APIKeysFile is the key file (see package apikey) that clients of the
	// Generate and /v1/ APIs authenticate against, reloaded when it
	// changes; empty lets every client generate.
	APIKeysFile string
	// Security is the router's certificate (served to clients, shown to
	// expert nodes), the CA it trusts and the gossip keyring, or Insecure.
	// Client, admin and router certificates may call Generation.
	Security mtls.Security
}

// DefaultConfig returns the local defaults, which are also the command
// line's: fixed loopback ports for the servers, a free one for gossip.
func DefaultConfig() Config {
	return Config{
		ID:               "router-0",
		Prefix:           cluster.DefaultPrefix,
		GRPCAddr:         "127.0.0.1:7400",
		HTTPAddr:         "127.0.0.1:8400",
		GossipAddr:       "127.0.0.1:0",
		LeaseTTL:         cluster.DefaultLeaseTTL,
		Dispatch:         DefaultDispatchConfig(),
		Scheduler:        DefaultSchedulerConfig(),
		DefaultMaxTokens: 128,
		MaxExplainTokens: DefaultMaxExplainTokens,
		RequestTimeout:   10 * time.Minute,
		LoadReport:       5 * time.Second,
		StopTimeout:      10 * time.Second,
	}
}

// validate reports every problem with the configuration at once.
func (c *Config) validate() error {
	var errs []error
	if c.ModelDir == "" {
		errs = append(errs, errors.New("a model directory is required"))
	}
	if len(c.EtcdEndpoints) == 0 {
		errs = append(errs, errors.New("etcd endpoints are required"))
	}
	if _, err := cluster.NewKeys(c.Prefix); err != nil {
		errs = append(errs, fmt.Errorf("prefix: %w", err))
	}
	if s := c.Scheduler; s.MaxBatchTokens < 1 || s.PrefillChunk < 1 || s.MaxRunning < 1 || s.MaxWaiting < 1 {
		errs = append(errs, fmt.Errorf("scheduler limits must be at least 1: %+v", s))
	}
	if c.DefaultMaxTokens < 1 {
		errs = append(errs, fmt.Errorf("default max tokens %d must be at least 1", c.DefaultMaxTokens))
	}
	if c.MaxExplainTokens < 0 {
		errs = append(errs, fmt.Errorf("max explain tokens %d must not be negative (0: the default %d)", c.MaxExplainTokens, DefaultMaxExplainTokens))
	}
	if c.Dispatch.WaitForHolder <= 0 {
		errs = append(errs, fmt.Errorf("wait for holder %v must be positive", c.Dispatch.WaitForHolder))
	}
	if c.LoadReport <= 0 {
		errs = append(errs, fmt.Errorf("load report interval %v must be positive", c.LoadReport))
	}
	if err := cluster.ValidateID(c.ID); err != nil {
		errs = append(errs, fmt.Errorf("id: %w", err))
	}
	if err := c.Security.Validate(true); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Policy is who may call a router: clients, admins and other routers
// generate.
var Policy = mtls.Policy{Allow: map[string][]pki.Role{
	"/" + moegridv1.Generation_ServiceDesc.ServiceName + "/*": {pki.RoleClient, pki.RoleAdmin, pki.RoleRouter},
}}

// Router is one router. Build it with New and run it with Run; its
// accessors are safe for concurrent use.
type Router struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	reg     prometheus.Registerer // for the servers and the dispatcher Run makes
	seeds   seedSource

	running atomic.Bool
	ready   chan struct{}

	// Set by Run before the servers start, read-only afterwards.
	model       *model.Model
	tok         *tokenizer.Tokenizer
	fingerprint string
	gossipTopo  *clusterTopology
	dispatcher  *Dispatcher
	sched       *Scheduler
	servers     *serve.Servers
	started     time.Time
	// Set before ready is closed, read-only afterwards.
	grpcAddr, httpAddr string
	// experts publishes dispatcher, once Run has made it, to Experts.
	experts atomic.Pointer[Dispatcher]
	// keys authenticates clients; nil when Config.APIKeysFile is empty. Set
	// by Run before the servers start.
	keys *apikey.Guard

	// routed counts tokens routed to each expert (all layers) since the last
	// load report.
	routed []atomic.Uint64
}

// New validates cfg, reporting every problem at once, and builds a router
// whose metrics are registered with reg (nil: a private registry); /metrics
// serves reg if it is also a prometheus.Gatherer, as *prometheus.Registry
// is. A nil logger discards. New reads no files and binds nothing: Run does.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Router, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("router: config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	if cfg.ModelName == "" {
		cfg.ModelName = filepath.Base(filepath.Clean(cfg.ModelDir))
	}
	return &Router{
		cfg:     cfg,
		log:     log.With("router", cfg.ID),
		metrics: newMetrics(reg),
		reg:     reg,
		seeds:   newSeedSource(),
		ready:   make(chan struct{}),
	}, nil
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

// Ready is closed once Run serves; the address accessors are valid from
// then on.
func (r *Router) Ready() <-chan struct{} { return r.ready }

// GRPCAddr is the bound gRPC address (after Ready).
func (r *Router) GRPCAddr() string { return r.grpcAddr }

// HTTPAddr is the bound HTTP address (after Ready).
func (r *Router) HTTPAddr() string { return r.httpAddr }

// Run loads the model and tokenizer, binds the listeners, joins the cluster
// and serves until ctx is done. It returns nil when ctx ends it, also while
// it still waits for etcd, and releases everything it acquired on every
// return. Run may be called once.
func (r *Router) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("router: Run called twice")
	}
	if err := r.loadModel(); err != nil {
		return err
	}
	defer r.model.Close()
	src, err := r.cfg.Security.Source(r.log)
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	if r.cfg.Security.Insecure {
		r.log.Warn("running INSECURE: plaintext gRPC, HTTP, etcd and gossip, no identity checks (--insecure)")
	}
	etcdOpts, etcdSrc, err := cluster.EtcdSecurity(r.cfg.Security, src, r.cfg.EtcdEndpoints, r.log)
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	keyring, err := r.cfg.Security.GossipKeyring()
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}

	// Authorization by role, then authentication by API key, run before
	// the error boundary: their refusals are statuses already, and a
	// refused call never reaches a handler.
	scfg := serve.Config{GRPCAddr: r.cfg.GRPCAddr, HTTPAddr: r.cfg.HTTPAddr, StopTimeout: r.cfg.StopTimeout, TLS: src, Policy: Policy}
	if r.cfg.APIKeysFile == "" {
		r.log.Warn("no API keys: every client may generate")
	} else {
		keys, err := apikey.New(apikey.Config{File: r.cfg.APIKeysFile}, r.log, r.reg)
		if err != nil {
			return fmt.Errorf("router: %w", err)
		}
		r.keys = keys
		r.log.Info("API keys loaded", "file", r.cfg.APIKeysFile, "keys", keys.Len())
		scfg.UnaryInterceptors = append(scfg.UnaryInterceptors, keys.UnaryServerInterceptor(grpcAPI))
		scfg.StreamInterceptors = append(scfg.StreamInterceptors, keys.StreamServerInterceptor(grpcAPI))
	}
	boundary := grpcerr.New(errorCodes, r.log)
	scfg.UnaryInterceptors = append(scfg.UnaryInterceptors, boundary.Unary())
	scfg.StreamInterceptors = append(scfg.StreamInterceptors, boundary.Stream())
	servers, err := serve.New(scfg, r.reg, r.log)
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	moegridv1.RegisterGenerationServer(servers.GRPC, &generationService{r: r})
	r.httpHandler(servers.Mux)
	if err := servers.Bind(); err != nil {
		return fmt.Errorf("router: %w", err)
	}
	defer servers.Close()
	r.servers = servers

	gcfg := cluster.DefaultGossipConfig(r.cfg.ID, cluster.RoleRouter)
	gcfg.BindAddr = r.cfg.GossipAddr
	gcfg.AdvertiseAddr = r.cfg.GossipAdvertise
	gcfg.Join = r.cfg.Join
	gcfg.Keyring = keyring
	member, err := cluster.Join(ctx, cluster.JoinConfig{EtcdEndpoints: r.cfg.EtcdEndpoints, Prefix: r.cfg.Prefix, Etcd: etcdOpts, Gossip: gcfg}, r.log)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for etcd
		}
		return fmt.Errorf("router: %w", err)
	}
	defer member.Close()
	st := member.Store

	r.gossipTopo = newClusterTopology(r.fingerprint, member.Gossip)
	dcfg := r.cfg.Dispatch
	dcfg.TLS = src
	dcfg.Reachable = r.gossipTopo.setReachable
	r.dispatcher = NewDispatcher(dcfg, r.gossipTopo, r.model.Config.HiddenSize, r.log, r.reg)
	defer r.dispatcher.Close()
	r.gossipTopo.onChange = r.dispatcher.Retain
	r.experts.Store(r.dispatcher)
	r.sched = NewScheduler(r.cfg.Scheduler, r.model, r.dispatcher, r.log, r.metrics, r.countRoutes)

	loads, err := st.ReportLoad(ctx, cluster.LoadRecord{RouterID: r.cfg.ID, Fingerprint: r.fingerprint, TokensPerSecond: make([]float64, r.model.Config.NumLocalExperts)},
		cluster.LeaseOptions{TTL: r.cfg.LeaseTTL, Logger: r.log})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("router: %w", err)
	}
	defer loads.Close()

	r.grpcAddr, r.httpAddr = servers.GRPCAddr(), servers.HTTPAddr()
	r.log.Info("router up", "grpc", r.grpcAddr, "http", r.httpAddr, "gossip", member.Gossip.Addr(), "model", r.cfg.ModelName, "fingerprint", r.fingerprint)
	close(r.ready)
	g, gctx := errgroup.WithContext(ctx)
	// The scheduler outlives ctx until the servers have stopped: their
	// graceful stop waits for the streams in flight, which need it to
	// finish (within StopTimeout) instead of failing at once.
	schedCtx, stopSched := context.WithCancel(context.WithoutCancel(gctx))
	g.Go(func() error { r.gossipTopo.run(gctx, st); return nil })
	g.Go(func() error { return r.sched.Run(schedCtx) })
	g.Go(func() error { defer stopSched(); return servers.Run(gctx) })
	g.Go(func() error { r.followReadiness(gctx); return nil })
	g.Go(func() error { r.reportLoad(gctx, loads); return nil })
	if r.keys != nil {
		g.Go(func() error { r.keys.Run(gctx); return nil })
	}
	g.Go(func() error { return mtls.RunSources(gctx, src, etcdSrc) })
	return g.Wait()
}

// loadModel maps the model's non-expert weights and reads its tokenizer and
// fingerprint; on error it holds nothing.
func (r *Router) loadModel() error {
	m, err := model.Load(r.cfg.ModelDir)
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	tok, err := model.LoadTokenizer(r.cfg.ModelDir)
	if err == nil && tok.VocabSize() > m.Config.VocabSize {
		err = fmt.Errorf("tokenizer has %d tokens, the model %d", tok.VocabSize(), m.Config.VocabSize)
	}
	var fp string
	if err == nil {
		fp, err = model.Fingerprint(r.cfg.ModelDir)
	}
	if err != nil {
		m.Close()
		return fmt.Errorf("router: %w", err)
	}
	r.model, r.tok, r.fingerprint = m, tok, fp
	r.routed = make([]atomic.Uint64, m.Config.NumLocalExperts)
	r.started = time.Now()
	return nil
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
// layers) for the coordinator's replica choice, and the expert nodes the
// dispatcher holds suspect or ejected for the cluster's status. A change of
// verdict is written at once; rates wait for the lease's refresh.
func (r *Router) reportLoad(ctx context.Context, loads *cluster.LoadReporter) {
	t := time.NewTicker(r.cfg.LoadReport)
	defer t.Stop()
	last := time.Now()
	var reported []cluster.NodeVerdict
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
			verdicts := r.dispatcher.Unhealthy(now)
			if slices.EqualFunc(verdicts, reported, sameVerdict) {
				continue
			}
			if err := loads.SetUnhealthy(verdicts); err != nil {
				r.log.Warn("reporting unhealthy expert nodes failed", "err", err)
				continue
			}
			if err := loads.Flush(ctx); err != nil {
				r.log.Debug("load report failed", "err", err)
				continue
			}
			reported = verdicts
		}
	}
}

// sameVerdict reports whether two verdicts say the same of the same node
// from the same moment: a new error text alone is not worth a write.
func sameVerdict(a, b cluster.NodeVerdict) bool {
	return a.NodeID == b.NodeID && a.State == b.State && a.Since.Equal(b.Since)
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
