package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Role is what a process does in the cluster; gossip metadata carries it.
type Role string

// Roles.
const (
	RoleNode        Role = "node"
	RoleCoordinator Role = "coordinator"
	RoleRouter      Role = "router"
)

// Valid reports whether r is one of the roles.
func (r Role) Valid() bool {
	return r == RoleNode || r == RoleCoordinator || r == RoleRouter
}

// MemberMeta is the metadata a process gossips about itself (memberlist's
// NodeMeta, at most 512 bytes encoded): cheap, seconds-fresh facts that do
// not belong in etcd.
type MemberMeta struct {
	// Role is the member's role.
	Role Role `json:"role"`
	// GRPCAddr is the member's gRPC address, if it serves one.
	GRPCAddr string `json:"grpc_addr,omitempty"`
	// Load is an expert node's live load.
	Load *NodeLoad `json:"load,omitempty"`
}

// MemberState is the gossip view of a member.
type MemberState string

// Member states. memberlist's "suspect" is reported as alive: only a
// confirmed failure counts. A member that left cleanly is dead too.
const (
	MemberAlive MemberState = "alive"
	MemberDead  MemberState = "dead"
)

// Member is one process of the gossip ring as this process sees it.
type Member struct {
	// ID is the member's name: its node, router or coordinator ID.
	ID string
	// Addr is its gossip address, host:port.
	Addr string
	// State is alive or dead (failed, or left).
	State MemberState
	// Since is when this process saw the state begin.
	Since time.Time
	// Meta is the member's last gossiped metadata; the zero value if it
	// did not decode.
	Meta MemberMeta
}

// GossipConfig configures a process's membership in the gossip ring. The
// timings trade detection speed against false alarms: with the defaults a
// crashed process is declared dead in about 4-6 s on a LAN.
type GossipConfig struct {
	// ID names the member; the process's node, router or coordinator ID,
	// unique in the cluster across roles.
	ID string
	// Role is the process's role.
	Role Role
	// BindAddr is the host:port to listen on, UDP and TCP. Port 0 picks a
	// free port. Default "127.0.0.1:0".
	BindAddr string
	// AdvertiseAddr is the host:port other members reach this one at.
	// Default: the bound address (a wildcard host is replaced by a private
	// address of the machine).
	AdvertiseAddr string
	// Join lists gossip addresses (host:port) of members to join at start
	// and whenever they are not seen alive; optional.
	Join []string
	// Seeds, if set, returns more addresses to join in the same way, e.g.
	// the gossip addresses of the node records in etcd. Called from the
	// rejoin loop; must not block.
	Seeds func() []string
	// RejoinInterval is how often the seeds not seen alive are joined again,
	// which also heals a partition after both sides declared each other
	// dead. Default 5 s.
	RejoinInterval time.Duration
	// ProbeInterval is how often a random member is probed. Default 1 s.
	ProbeInterval time.Duration
	// ProbeTimeout is how long a probe waits for an ack; it should exceed
	// the network's 99th percentile round trip. Default 500 ms.
	ProbeTimeout time.Duration
	// SuspicionMult sets how long a suspected member has to refute before it
	// is declared dead: SuspicionMult × log10(members) × ProbeInterval, at
	// least SuspicionMult × ProbeInterval. Default 3.
	SuspicionMult int
	// GossipInterval is how often state changes are gossiped. Default 200 ms.
	GossipInterval time.Duration
	// MetaInterval is how often the member re-gossips its metadata when Meta
	// is set (live load). Default 2 s.
	MetaInterval time.Duration
	// Meta returns the member's metadata; nil gossips the role alone. Called
	// by memberlist's goroutines: it must be fast and safe for concurrent
	// use. Role is filled in by Gossip.
	Meta func() MemberMeta
	// DeadRetention is how long a dead member is remembered (Dead
	// reports true) before it is forgotten. Default 10 min.
	DeadRetention time.Duration
	// Keyring encrypts and authenticates every gossip message (AES-GCM):
	// the first key encrypts, every key decrypts, and a message that is
	// not encrypted with one of them is dropped, so a process without the
	// key cannot join. Each key is 16, 24 or 32 bytes. Nil gossips in
	// plaintext.
	Keyring [][]byte
}

// DefaultGossipConfig returns the LAN defaults for a member id with a role.
func DefaultGossipConfig(id string, role Role) GossipConfig {
	return GossipConfig{
		ID:             id,
		Role:           role,
		BindAddr:       "127.0.0.1:0",
		RejoinInterval: 5 * time.Second,
		ProbeInterval:  time.Second,
		ProbeTimeout:   500 * time.Millisecond,
		SuspicionMult:  3,
		GossipInterval: 200 * time.Millisecond,
		MetaInterval:   2 * time.Second,
		DeadRetention:  10 * time.Minute,
	}
}

func (c *GossipConfig) fill() error {
	d := DefaultGossipConfig(c.ID, c.Role)
	if c.BindAddr == "" {
		c.BindAddr = d.BindAddr
	}
	for _, p := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&c.RejoinInterval, d.RejoinInterval}, {&c.ProbeInterval, d.ProbeInterval},
		{&c.ProbeTimeout, d.ProbeTimeout}, {&c.GossipInterval, d.GossipInterval},
		{&c.MetaInterval, d.MetaInterval}, {&c.DeadRetention, d.DeadRetention},
	} {
		if *p.v == 0 {
			*p.v = p.def
		}
		if *p.v < 0 {
			return fmt.Errorf("cluster: gossip: negative duration %v", *p.v)
		}
	}
	if c.SuspicionMult == 0 {
		c.SuspicionMult = d.SuspicionMult
	}
	if c.SuspicionMult < 1 {
		return fmt.Errorf("cluster: gossip: suspicion multiplier %d: at least 1", c.SuspicionMult)
	}
	if c.ProbeTimeout >= c.ProbeInterval {
		return fmt.Errorf("cluster: gossip: probe timeout %v must be shorter than the probe interval %v", c.ProbeTimeout, c.ProbeInterval)
	}
	if err := ValidateID(c.ID); err != nil {
		return fmt.Errorf("cluster: gossip: %w", err)
	}
	if !c.Role.Valid() {
		return fmt.Errorf("cluster: gossip: role %q: want node, coordinator or router", c.Role)
	}
	return nil
}

// Gossip is a process's membership in the memberlist ring of a cluster: fast
// failure detection (seconds) and live metadata. It is not the authority on
// membership — the etcd lease is, see the package documentation. A Gossip is
// safe for concurrent use.
type Gossip struct {
	cfg  GossipConfig
	log  *slog.Logger
	ml   *memberlist.Memberlist
	addr string // advertised host:port, fixed at start

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once

	// mu protects members and subs.
	mu      sync.Mutex
	members map[string]*Member
	subs    map[chan struct{}]struct{}
}

// StartGossip binds the gossip listeners, joins cfg.Join (failures are
// logged: the rejoin loop retries) and starts the background loops. Close
// stops them. A nil logger discards; memberlist's own log goes to it too.
func StartGossip(cfg GossipConfig, logger *slog.Logger) (*Gossip, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("gossip_id", cfg.ID)
	g := &Gossip{
		cfg:     cfg,
		log:     logger,
		stop:    make(chan struct{}),
		members: make(map[string]*Member),
		subs:    make(map[chan struct{}]struct{}),
	}
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.ID
	host, port, err := splitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("cluster: gossip bind address: %w", err)
	}
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertisePort = port
	if cfg.AdvertiseAddr != "" {
		if mc.AdvertiseAddr, mc.AdvertisePort, err = splitHostPort(cfg.AdvertiseAddr); err != nil {
			return nil, fmt.Errorf("cluster: gossip advertise address: %w", err)
		}
	}
	mc.ProbeInterval = cfg.ProbeInterval
	mc.ProbeTimeout = cfg.ProbeTimeout
	mc.SuspicionMult = cfg.SuspicionMult
	mc.GossipInterval = cfg.GossipInterval
	mc.PushPullInterval = 10 * time.Second
	mc.TCPTimeout = 3 * time.Second
	// A restarted process comes back under the same name at a new port:
	// let it replace its dead self soon.
	mc.DeadNodeReclaimTime = cfg.ProbeInterval
	mc.Delegate = (*gossipDelegate)(g)
	mc.Events = (*gossipEvents)(g)
	mc.Conflict = (*gossipEvents)(g)
	mc.Logger = log.New(&memberlistLog{log: logger}, "", 0)
	if len(cfg.Keyring) > 0 {
		kr, err := memberlist.NewKeyring(cfg.Keyring[1:], cfg.Keyring[0])
		if err != nil {
			return nil, fmt.Errorf("cluster: gossip keyring: %w", err)
		}
		mc.Keyring = kr
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("cluster: gossip: %w", err)
	}
	g.ml = ml
	// Read once, before anything updates the local node: memberlist's
	// LocalNode is not synchronised.
	n := ml.LocalNode()
	g.addr = net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
	if len(cfg.Join) > 0 {
		if _, err := ml.Join(cfg.Join); err != nil {
			logger.Warn("gossip join failed; will retry", "seeds", cfg.Join, "err", err)
		}
	}
	g.wg.Add(1)
	go g.loop()
	logger.Info("gossip started", "addr", g.Addr(), "role", cfg.Role)
	return g, nil
}

func splitHostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q", p)
	}
	if h == "" {
		h = "0.0.0.0"
	}
	return h, port, nil
}

// Addr returns the member's advertised gossip address, host:port: what
// NodeRecord.GossipAddr and others' Join should hold.
func (g *Gossip) Addr() string { return g.addr }

// Join contacts the given gossip addresses and returns how many answered.
func (g *Gossip) Join(addrs []string) (int, error) { return g.ml.Join(addrs) }

// Alive reports whether member id is known and not declared dead or left.
func (g *Gossip) Alive(id string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.members[id]
	return ok && m.State == MemberAlive
}

// Dead reports whether member id was seen and has since been declared dead
// or has left. A member never seen is neither Alive nor Dead.
func (g *Gossip) Dead(id string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.members[id]
	return ok && m.State != MemberAlive
}

// Member returns what this process knows of member id.
func (g *Gossip) Member(id string) (Member, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.members[id]
	if !ok {
		return Member{}, false
	}
	return *m, true
}

// Members returns every member known, this one included, sorted by ID.
func (g *Gossip) Members() []Member {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]Member, 0, len(g.members))
	for _, id := range slices.Sorted(maps.Keys(g.members)) {
		out = append(out, *g.members[id])
	}
	return out
}

// Subscribe returns a channel that receives a value after membership or
// metadata changes (coalesced: one value may stand for many changes) and a
// function that ends the subscription. The channel is never closed.
func (g *Gossip) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	g.mu.Lock()
	g.subs[ch] = struct{}{}
	g.mu.Unlock()
	return ch, func() {
		g.mu.Lock()
		delete(g.subs, ch)
		g.mu.Unlock()
	}
}

// UpdateMeta gossips the member's metadata now instead of at the next
// MetaInterval.
func (g *Gossip) UpdateMeta() error {
	if g.cfg.Meta == nil {
		return nil
	}
	return g.ml.UpdateNode(g.cfg.ProbeInterval)
}

// Close leaves the ring (so that the others learn it at once instead of
// after a failure timeout), stops the loops and the listeners. Idempotent.
func (g *Gossip) Close() error {
	var err error
	g.closeOnce.Do(func() {
		close(g.stop)
		g.wg.Wait()
		if lerr := g.ml.Leave(g.cfg.ProbeInterval); lerr != nil {
			g.log.Debug("gossip leave", "err", lerr)
		}
		err = g.ml.Shutdown()
		g.log.Info("gossip stopped")
	})
	return err
}

// crash stops the member without leaving, as a killed process would. For
// tests.
func (g *Gossip) crash() {
	g.closeOnce.Do(func() {
		close(g.stop)
		g.wg.Wait()
		_ = g.ml.Shutdown()
	})
}

// loop rejoins seeds, re-gossips metadata and forgets long-dead members.
func (g *Gossip) loop() {
	defer g.wg.Done()
	rejoin := time.NewTicker(g.cfg.RejoinInterval)
	defer rejoin.Stop()
	var meta <-chan time.Time
	if g.cfg.Meta != nil {
		t := time.NewTicker(g.cfg.MetaInterval)
		defer t.Stop()
		meta = t.C
	}
	for {
		select {
		case <-g.stop:
			return
		case <-rejoin.C:
			g.rejoin()
			g.forget()
		case <-meta:
			if err := g.ml.UpdateNode(g.cfg.ProbeInterval); err != nil {
				g.log.Debug("gossip metadata update", "err", err)
			}
		}
	}
}

// rejoin joins up to two seeds that no alive member advertises.
func (g *Gossip) rejoin() {
	seeds := slices.Clone(g.cfg.Join)
	if g.cfg.Seeds != nil {
		seeds = append(seeds, g.cfg.Seeds()...)
	}
	if len(seeds) == 0 {
		return
	}
	alive := map[string]bool{g.Addr(): true}
	g.mu.Lock()
	for _, m := range g.members {
		if m.State == MemberAlive {
			alive[m.Addr] = true
		}
	}
	g.mu.Unlock()
	var todo []string
	for _, s := range seeds {
		if s != "" && !alive[s] && !slices.Contains(todo, s) {
			todo = append(todo, s)
		}
	}
	rand.Shuffle(len(todo), func(i, j int) { todo[i], todo[j] = todo[j], todo[i] })
	if len(todo) > 2 {
		todo = todo[:2]
	}
	if len(todo) == 0 {
		return
	}
	if n, err := g.ml.Join(todo); err != nil {
		g.log.Debug("gossip rejoin", "seeds", todo, "joined", n, "err", err)
	}
}

func (g *Gossip) forget() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for id, m := range g.members {
		if m.State != MemberAlive && time.Since(m.Since) > g.cfg.DeadRetention {
			delete(g.members, id)
		}
	}
}

// set records a member's state and meta and notifies subscribers. Called by
// memberlist with its node lock held: it must not call into memberlist.
func (g *Gossip) set(n *memberlist.Node, state MemberState) {
	var meta MemberMeta
	if len(n.Meta) > 0 {
		if err := json.Unmarshal(n.Meta, &meta); err != nil {
			g.log.Warn("gossip: undecodable member metadata", "member", n.Name, "err", err)
			meta = MemberMeta{}
		}
	}
	addr := net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.members[n.Name]
	if !ok {
		m = &Member{ID: n.Name}
		g.members[n.Name] = m
	}
	if !ok || m.State != state {
		m.Since = time.Now()
		if n.Name != g.cfg.ID {
			g.log.Info("gossip member state", "member", n.Name, "addr", addr, "state", state)
		}
	}
	m.State, m.Addr, m.Meta = state, addr, meta
	for ch := range g.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// gossipEvents is the memberlist.EventDelegate and ConflictDelegate.
type gossipEvents Gossip

func (e *gossipEvents) NotifyJoin(n *memberlist.Node)   { (*Gossip)(e).set(n, MemberAlive) }
func (e *gossipEvents) NotifyUpdate(n *memberlist.Node) { (*Gossip)(e).set(n, MemberAlive) }
func (e *gossipEvents) NotifyLeave(n *memberlist.Node)  { (*Gossip)(e).set(n, MemberDead) }

func (e *gossipEvents) NotifyConflict(existing, other *memberlist.Node) {
	e.log.Error("gossip: two members claim one id; ids must be unique in the cluster",
		"member", existing.Name, "addr", existing.Address(), "other_addr", other.Address())
}

// gossipDelegate is the memberlist.Delegate: metadata only, no user
// messages or state.
type gossipDelegate Gossip

func (d *gossipDelegate) NodeMeta(limit int) []byte {
	meta := MemberMeta{}
	if d.cfg.Meta != nil {
		meta = d.cfg.Meta()
	}
	meta.Role = d.cfg.Role
	b, err := json.Marshal(meta)
	if err != nil || len(b) > limit {
		// Drop the optional parts rather than gossip nothing.
		b, _ = json.Marshal(MemberMeta{Role: d.cfg.Role, GRPCAddr: meta.GRPCAddr})
		if len(b) > limit {
			b, _ = json.Marshal(MemberMeta{Role: d.cfg.Role})
		}
	}
	return b
}

func (d *gossipDelegate) NotifyMsg([]byte)                  {}
func (d *gossipDelegate) GetBroadcasts(int, int) [][]byte   { return nil }
func (d *gossipDelegate) LocalState(bool) []byte            { return nil }
func (d *gossipDelegate) MergeRemoteState(_ []byte, _ bool) {}

// memberlistLog turns memberlist's "[LEVEL] memberlist: message" lines into
// slog records.
type memberlistLog struct{ log *slog.Logger }

func (w *memberlistLog) Write(p []byte) (int, error) {
	line := string(bytes.TrimRight(p, "\n"))
	level := slog.LevelInfo
	for _, l := range []struct {
		tag   string
		level slog.Level
	}{{"[DEBUG]", slog.LevelDebug}, {"[INFO]", slog.LevelInfo}, {"[WARN]", slog.LevelWarn}, {"[ERR]", slog.LevelError}, {"[ERROR]", slog.LevelError}} {
		if rest, ok := strings.CutPrefix(line, l.tag); ok {
			level, line = l.level, strings.TrimSpace(rest)
			break
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	w.log.Log(context.Background(), level, "memberlist", "line", line)
	return len(p), nil
}

var _ memberlist.Delegate = (*gossipDelegate)(nil)
var _ memberlist.EventDelegate = (*gossipEvents)(nil)
var _ memberlist.ConflictDelegate = (*gossipEvents)(nil)
