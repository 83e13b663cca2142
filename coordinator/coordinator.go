package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/coordinator/placement"
	"github.com/moegrid/moegrid/internal/mtls"
	"github.com/moegrid/moegrid/internal/pki"
	"github.com/moegrid/moegrid/internal/retry"
	"github.com/moegrid/moegrid/internal/serve"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// Coordinator is one coordinator replica. Build it with New and run it with
// Run; its accessors are safe for concurrent use.
type Coordinator struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	reg     prometheus.Registerer
	servers *serve.Servers // set by Run before ready is closed

	started atomic.Bool
	ready   chan struct{}
	// Set before ready is closed, read-only afterwards.
	grpcAddr, httpAddr string
	gossip             *cluster.Gossip // nil when disabled

	// store is set once etcd has been reached and the prefix checked.
	store    atomic.Pointer[cluster.Store]
	seeds    atomic.Pointer[[]string]
	isLeader atomic.Bool
}

// New validates cfg and builds a replica whose metrics are registered with
// reg (nil: a private registry). /metrics serves reg if it is also a
// prometheus.Gatherer, as *prometheus.Registry is. A nil logger discards.
func New(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Coordinator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("coordinator: config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("coordinator: metrics: %w", err)
	}
	return &Coordinator{
		cfg:     cfg,
		log:     logger.With("coordinator", cfg.ID),
		metrics: m,
		reg:     reg,
		ready:   make(chan struct{}),
	}, nil
}

// Ready is closed once Run has bound its listeners; the address accessors
// are valid from then on.
func (c *Coordinator) Ready() <-chan struct{} { return c.ready }

// GRPCAddr returns the bound gRPC address (after Ready).
func (c *Coordinator) GRPCAddr() string { return c.grpcAddr }

// HTTPAddr returns the bound HTTP address, "" when disabled (after Ready).
func (c *Coordinator) HTTPAddr() string { return c.httpAddr }

// GossipAddr returns the advertised gossip address, "" when disabled (after
// Ready).
func (c *Coordinator) GossipAddr() string {
	if c.gossip == nil {
		return ""
	}
	return c.gossip.Addr()
}

// Policy is who may call a coordinator: admins and routers read the
// status, admins drain.
var Policy = mtls.Policy{Allow: map[string][]pki.Role{
	moegridv1.Cluster_Status_FullMethodName: {pki.RoleAdmin, pki.RoleRouter},
	moegridv1.Cluster_Drain_FullMethodName:  {pki.RoleAdmin},
}}

// IsLeader reports whether this replica holds the election now.
func (c *Coordinator) IsLeader() bool { return c.isLeader.Load() }

// Run binds the listeners, joins gossip, connects to etcd and serves until
// ctx is done; then it resigns leadership, stops the servers gracefully and
// returns nil. It returns an error if a listener cannot be bound or the
// prefix holds foreign data. Run may be called once.
func (c *Coordinator) Run(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("coordinator: Run called twice")
	}
	src, err := c.cfg.Security.Source(c.log)
	if err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if c.cfg.Security.Insecure {
		c.log.Warn("running INSECURE: plaintext gRPC, HTTP, etcd and gossip, no identity checks (--insecure)")
	}
	etcdOpts, etcdSrc, err := cluster.EtcdSecurity(c.cfg.Security, src, c.cfg.EtcdEndpoints, c.log)
	if err != nil {
		return err
	}
	keyring, err := c.cfg.Security.GossipKeyring()
	if err != nil {
		return err
	}
	cli, err := cluster.NewEtcdClient(c.cfg.EtcdEndpoints, etcdOpts...)
	if err != nil {
		return err
	}
	defer cli.Close()

	boundary := errorBoundary(c.log)
	srv, err := serve.New(serve.Config{
		GRPCAddr:           c.cfg.GRPCAddr,
		HTTPAddr:           c.cfg.HTTPAddr,
		StopTimeout:        c.cfg.ShutdownTimeout,
		UnaryInterceptors:  []grpc.UnaryServerInterceptor{boundary.Unary()},
		StreamInterceptors: []grpc.StreamServerInterceptor{boundary.Stream()},
		ReadyCheck:         c.etcdAnswers,
		TLS:                src,
		Policy:             Policy,
	}, c.reg, c.log)
	if err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if err := srv.Bind(); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	c.servers = srv
	c.grpcAddr, c.httpAddr = srv.GRPCAddr(), srv.HTTPAddr()
	if !c.cfg.GossipDisabled {
		gcfg := c.cfg.Gossip
		gcfg.ID, gcfg.Role = c.cfg.ID, cluster.RoleCoordinator
		gcfg.Keyring = keyring
		gcfg.Seeds = c.currentSeeds
		gcfg.Meta = func() cluster.MemberMeta { return cluster.MemberMeta{GRPCAddr: c.grpcAddr} }
		if c.gossip, err = cluster.StartGossip(gcfg, c.log); err != nil {
			srv.Close()
			return err
		}
		defer c.gossip.Close()
	}
	moegridv1.RegisterClusterServer(srv.GRPC, &server{c: c})
	close(c.ready)
	c.log.Info("coordinator serving", "grpc", c.grpcAddr, "http", c.httpAddr, "gossip", c.GossipAddr(), "prefix", c.cfg.Prefix)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Run(gctx) })
	g.Go(func() error { return c.control(gctx, cli) })
	g.Go(func() error { return mtls.RunSources(gctx, src, etcdSrc) })
	err = g.Wait()
	c.log.Info("coordinator stopped", "err", err)
	return err
}

// control opens the cluster (retrying while etcd is unreachable), then runs
// the observer and the election until ctx is done.
func (c *Coordinator) control(ctx context.Context, cli *clientv3.Client) error {
	store, err := cluster.Connect(ctx, cli, c.cfg.Prefix, c.log)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("coordinator: %w", err)
	}
	c.store.Store(store)
	c.servers.SetReady(true, moegridv1.Cluster_ServiceDesc.ServiceName)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { c.observe(gctx, store); return nil })
	g.Go(func() error { c.elect(gctx, store); return nil })
	return g.Wait()
}

func (c *Coordinator) currentSeeds() []string {
	if p := c.seeds.Load(); p != nil {
		return *p
	}
	return nil
}

// gossipDead reports whether gossip has declared node n dead: the member
// with n's ID at n's gossip address. A node that does not gossip, or that
// gossip has not seen, is not dead.
func (c *Coordinator) gossipDead(n cluster.NodeRecord) bool {
	if c.gossip == nil || n.GossipAddr == "" {
		return false
	}
	m, ok := c.gossip.Member(n.ID)
	return ok && m.State == cluster.MemberDead && m.Addr == n.GossipAddr
}

// observeInterval bounds how often every replica re-reads the cluster for
// its gauges and gossip seeds.
const observeInterval = time.Second

// observe keeps the gossip seeds and the node and version gauges current on
// every replica, leader or not.
func (c *Coordinator) observe(ctx context.Context, store *cluster.Store) {
	changes := store.WatchChanges(ctx)
	var gossipCh <-chan struct{}
	if c.gossip != nil {
		ch, unsubscribe := c.gossip.Subscribe()
		defer unsubscribe()
		gossipCh = ch
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-changes:
		case <-gossipCh:
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		snap, err := store.Snapshot(sctx)
		cancel()
		if err == nil {
			seeds := make([]string, 0, len(snap.Nodes))
			counts := make(map[string]int)
			for _, n := range snap.Nodes {
				if n.GossipAddr != "" {
					seeds = append(seeds, n.GossipAddr)
				}
				switch {
				case c.gossipDead(n):
					counts["dead"]++
				case snap.Draining(n.ID):
					counts["draining"]++
				default:
					counts[string(n.State)]++
				}
			}
			c.seeds.Store(&seeds)
			for _, s := range nodeStates {
				c.metrics.nodes.WithLabelValues(s).Set(float64(counts[s]))
			}
			c.metrics.placementVersion.Set(float64(snap.Placement.Version))
		}
		if !retry.Sleep(ctx, observeInterval) {
			return
		}
	}
}

// elect campaigns for leadership and leads while elected, again and again
// until ctx is done.
func (c *Coordinator) elect(ctx context.Context, store *cluster.Store) {
	cli := store.Client()
	ttl := int64(math.Ceil(c.cfg.LeaseTTL.Seconds()))
	bo := &retry.Delay{Min: 200 * time.Millisecond, Max: 5 * time.Second}
	for ctx.Err() == nil {
		// The session outlives ctx so that stepping down can resign and
		// revoke; the grant is bounded by ctx.
		life, lifeCancel := context.WithCancel(context.WithoutCancel(ctx))
		lease, err := cli.Grant(ctx, ttl)
		var sess *concurrency.Session
		if err == nil {
			sess, err = concurrency.NewSession(cli, concurrency.WithLease(lease.ID),
				concurrency.WithTTL(int(ttl)), concurrency.WithContext(life))
		}
		if err != nil {
			lifeCancel()
			if ctx.Err() == nil {
				c.log.Warn("election session failed; retrying", "err", err)
				retry.Sleep(ctx, bo.Next())
			}
			continue
		}
		e := concurrency.NewElection(sess, store.Keys().Election())
		// Campaigning and leading end when ctx ends or the lease is lost.
		cctx, cancel := context.WithCancel(ctx)
		stop := context.AfterFunc(sess.Ctx(), cancel)
		err = e.Campaign(cctx, c.cfg.ID)
		if err == nil {
			bo.Reset()
			c.lead(cctx, store, e)
		}
		stop()
		cancel()
		rctx, rcancel := context.WithTimeout(life, 2*time.Second)
		if err == nil {
			if rerr := e.Resign(rctx); rerr != nil {
				c.log.Debug("resign", "err", rerr)
			}
		}
		sess.Orphan()
		if _, rerr := cli.Revoke(rctx, sess.Lease()); rerr != nil {
			c.log.Debug("revoke election lease", "err", rerr)
		}
		rcancel()
		lifeCancel()
		if err != nil && ctx.Err() == nil {
			c.log.Warn("campaign ended; campaigning again", "err", err)
			retry.Sleep(ctx, bo.Next())
		}
	}
}

// lead reconciles while this replica is leader: at once, after every change
// (debounced), every ResyncInterval, and after failures with backoff. It
// returns when ctx ends or leadership is lost.
func (c *Coordinator) lead(ctx context.Context, store *cluster.Store, e *concurrency.Election) {
	guard := cluster.GuardOf(e)
	c.isLeader.Store(true)
	c.metrics.leader.Set(1)
	c.log.Info("elected leader", "election_key", guard.Key)
	defer func() {
		c.isLeader.Store(false)
		c.metrics.leader.Set(0)
		c.log.Info("leadership ended")
	}()
	changes := store.WatchChanges(ctx)
	var gossipCh <-chan struct{}
	if c.gossip != nil {
		ch, unsubscribe := c.gossip.Subscribe()
		defer unsubscribe()
		gossipCh = ch
	}
	resync := time.NewTicker(c.cfg.ResyncInterval)
	defer resync.Stop()
	bo := &retry.Delay{Min: 100 * time.Millisecond, Max: 5 * time.Second}
	for {
		var again <-chan time.Time
		err := c.reconcile(ctx, store, guard)
		switch {
		case errors.Is(err, cluster.ErrNotLeader):
			c.log.Warn("leadership lost", "err", err)
			return
		case err != nil && ctx.Err() == nil:
			d := bo.Next()
			c.log.Warn("reconcile failed; retrying", "err", err, "in", d)
			again = time.After(d)
		default:
			bo.Reset()
		}
		select {
		case <-ctx.Done():
			return
		case _, ok := <-changes:
			if !ok {
				return
			}
		case <-gossipCh:
		case <-resync.C:
		case <-again:
		}
		if c.cfg.Debounce > 0 && !retry.Sleep(ctx, c.cfg.Debounce) {
			return
		}
	}
}

func (c *Coordinator) policy() policy {
	return policy{
		fingerprint: c.cfg.Fingerprint,
		options: placement.Options{
			MinReplicas:   c.cfg.MinReplicas,
			MaxReplicas:   c.cfg.MaxReplicas,
			LoadTolerance: c.cfg.LoadTolerance,
		},
		loadRebalanceInterval: c.cfg.LoadRebalanceInterval,
	}
}

// reconcile reads the cluster, drops stale drain marks and writes the
// placement the cluster should have if it differs from the current one.
func (c *Coordinator) reconcile(ctx context.Context, store *cluster.Store, guard cluster.LeaderGuard) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	snap, err := store.Snapshot(ctx)
	if err != nil {
		c.metrics.reconciles.WithLabelValues("error").Inc()
		return err
	}
	for _, m := range snap.StaleDrains() {
		if err := store.RemoveStaleDrain(ctx, m); err != nil {
			c.log.Warn("removing stale drain mark", "node", m.NodeID, "err", err)
		}
	}
	d := decide(snap, c.gossipDead, c.policy(), time.Now())
	if !d.write {
		c.metrics.reconciles.WithLabelValues("unchanged").Inc()
		if d.reason == "load deferred" {
			c.log.Debug("load-only placement change deferred", "interval", c.cfg.LoadRebalanceInterval)
		}
		return nil
	}
	rec := d.record
	rec.Leader = c.cfg.ID
	rec.Written = time.Now().UTC()
	if _, err := store.WritePlacement(ctx, guard, rec, snap.PlacementModRevision); err != nil {
		switch {
		case errors.Is(err, cluster.ErrNotLeader):
			c.metrics.writes.WithLabelValues("not_leader").Inc()
		case errors.Is(err, cluster.ErrStale):
			c.metrics.writes.WithLabelValues("stale").Inc()
		default:
			c.metrics.writes.WithLabelValues("error").Inc()
		}
		c.metrics.reconciles.WithLabelValues("error").Inc()
		return err
	}
	c.metrics.writes.WithLabelValues("ok").Inc()
	c.metrics.reconciles.WithLabelValues("written").Inc()
	c.metrics.placementVersion.Set(float64(rec.Version))
	if rec.Error != "" {
		c.log.Warn("no complete placement", "version_in_force", rec.Version, "err", rec.Error, "nodes", d.placed)
	} else {
		c.log.Info("placement written", "version", rec.Version, "reason", d.reason, "nodes", d.placed,
			"moves", placement.Moves(snap.Placement.Placement, rec.Placement))
	}
	return nil
}
