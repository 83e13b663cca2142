package cluster

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"
)

// fastGossip returns test timings: failure detection well under a second on
// loopback.
func fastGossip(id string, role Role, join ...string) GossipConfig {
	c := DefaultGossipConfig(id, role)
	c.Join = join
	c.ProbeInterval = 100 * time.Millisecond
	c.ProbeTimeout = 50 * time.Millisecond
	c.SuspicionMult = 2
	c.GossipInterval = 50 * time.Millisecond
	c.RejoinInterval = 200 * time.Millisecond
	c.MetaInterval = 100 * time.Millisecond
	return c
}

func startGossip(t *testing.T, cfg GossipConfig) *Gossip {
	t.Helper()
	log, _ := testLogger(t)
	g, err := StartGossip(cfg, log)
	if err != nil {
		t.Fatalf("StartGossip(%s): %v", cfg.ID, err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func TestGossip(t *testing.T) {
	coord := startGossip(t, fastGossip("coord", RoleCoordinator))
	changes, unsubscribe := coord.Subscribe()
	defer unsubscribe()
	var rows uint64
	var rowsMu = make(chan struct{}, 1)
	rowsMu <- struct{}{}
	nodeCfg := fastGossip("n1", RoleNode, coord.Addr())
	nodeCfg.Meta = func() MemberMeta {
		<-rowsMu
		defer func() { rowsMu <- struct{}{} }()
		return MemberMeta{GRPCAddr: "127.0.0.1:9000", Load: &NodeLoad{RowsTotal: rows}}
	}
	n1 := startGossip(t, nodeCfg)
	// n2 knows nobody at first; it is found through the coordinator's seeds.
	n2 := startGossip(t, fastGossip("n2", RoleNode))
	coordSeeds := fastGossip("coord2", RoleCoordinator)
	coordSeeds.Seeds = func() []string { return []string{n1.Addr(), n2.Addr()} }
	coord2 := startGossip(t, coordSeeds)

	for _, g := range []*Gossip{coord, n1, n2, coord2} {
		eventually(t, 5*time.Second, g.cfg.ID+" sees everyone", func() error {
			for _, id := range []string{"coord", "coord2", "n1", "n2"} {
				if !g.Alive(id) {
					return errorf("%s not alive: %+v", id, g.Members())
				}
			}
			return nil
		})
	}
	select {
	case <-changes:
	default:
		t.Errorf("no change notification")
	}
	m, ok := coord.Member("n1")
	if !ok || m.Meta.Role != RoleNode || m.Meta.GRPCAddr != "127.0.0.1:9000" || m.Addr != n1.Addr() {
		t.Errorf("member n1 = %+v", m)
	}
	// Live load reaches the others by the metadata refresh.
	<-rowsMu
	rows = 99
	rowsMu <- struct{}{}
	eventually(t, 5*time.Second, "load gossiped", func() error {
		m, _ := coord.Member("n1")
		if m.Meta.Load == nil || m.Meta.Load.RowsTotal != 99 {
			return errorf("meta %+v", m.Meta)
		}
		return nil
	})
	if coord.Alive("stranger") || coord.Dead("stranger") {
		t.Errorf("a member never seen is alive or dead")
	}

	// A crash (no goodbye) is detected by probing, in well under a second
	// with these timings.
	start := time.Now()
	n2.crash()
	eventually(t, 5*time.Second, "crash detected", func() error {
		if !coord.Dead("n2") || coord.Alive("n2") {
			return errorf("n2 still alive")
		}
		return nil
	})
	t.Logf("crash detected in %v", time.Since(start))
	if m, _ := coord.Member("n2"); m.State != MemberDead {
		t.Errorf("crashed member state %s, want dead", m.State)
	}
	// A clean Close is a leave, seen at once.
	n1.Close()
	eventually(t, 2*time.Second, "leave seen", func() error {
		if !coord.Dead("n1") {
			return errorf("n1 still alive")
		}
		return nil
	})
	// n2 comes back under the same id at a new address (a restarted
	// process) and is alive again.
	n2b := startGossip(t, fastGossip("n2", RoleNode, coord.Addr()))
	eventually(t, 5*time.Second, "restarted member alive", func() error {
		if !coord.Alive("n2") {
			return errorf("members %+v", coord.Members())
		}
		if m, _ := coord.Member("n2"); m.Addr != n2b.Addr() {
			return errorf("n2 addr %s, want %s", m.Addr, n2b.Addr())
		}
		return nil
	})
	ids := []string{}
	for _, m := range coord.Members() {
		ids = append(ids, m.ID)
	}
	if !slices.IsSorted(ids) {
		t.Errorf("Members not sorted: %v", ids)
	}
}

func TestGossipConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		mut func(*GossipConfig)
		err string
	}{
		{func(c *GossipConfig) { c.ID = "" }, "invalid id"},
		{func(c *GossipConfig) { c.Role = "boss" }, `role "boss"`},
		{func(c *GossipConfig) { c.ProbeTimeout = 2 * time.Second }, "shorter than the probe interval"},
		{func(c *GossipConfig) { c.BindAddr = "nope" }, "bind address"},
		{func(c *GossipConfig) { c.SuspicionMult = -1 }, "suspicion"},
	} {
		c := DefaultGossipConfig("a", RoleRouter)
		tc.mut(&c)
		if _, err := StartGossip(c, nil); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("StartGossip = %v, want error containing %q", err, tc.err)
		}
	}
}

func TestGossipMetaLimit(t *testing.T) {
	d := &gossipDelegate{cfg: GossipConfig{Role: RoleNode, Meta: func() MemberMeta {
		return MemberMeta{GRPCAddr: strings.Repeat("h", 600) + ":1", Load: &NodeLoad{RowsTotal: 1}}
	}}}
	if b := d.NodeMeta(512); len(b) > 512 || !strings.Contains(string(b), `"role":"node"`) {
		t.Errorf("NodeMeta = %d bytes %q", len(b), b)
	}
}

// TestGossipKeyring checks that an encrypted ring admits members holding
// its key (also as a secondary key, as during a rotation) and no one else:
// not a member with another key, not a plaintext one.
func TestGossipKeyring(t *testing.T) {
	key := func(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }
	withKeys := func(id string, join string, keys ...[]byte) GossipConfig {
		c := fastGossip(id, RoleNode)
		if join != "" {
			c.Join = []string{join}
		}
		c.Keyring = keys
		return c
	}
	seed := startGossip(t, withKeys("seed", "", key(1)))
	for _, tc := range []struct {
		name  string
		keys  [][]byte
		joins bool
	}{
		{"same key", [][]byte{key(1)}, true},
		{"rotation step 1: a new key second", [][]byte{key(1), key(2)}, true},
		{"new primary the ring lacks", [][]byte{key(2), key(1)}, false},
		{"other key", [][]byte{key(3)}, false},
		{"plaintext", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "m-" + strings.ReplaceAll(tc.name, " ", "-")
			id = strings.NewReplacer(",", "", ":", "").Replace(id)
			m := startGossip(t, withKeys(id, seed.Addr(), tc.keys...))
			if tc.joins {
				eventually(t, 5*time.Second, "member joins", func() error {
					if !seed.Alive(id) || !m.Alive("seed") {
						return errorf("seed sees %v, member sees %v", seed.Members(), m.Members())
					}
					return nil
				})
				return
			}
			// Several rejoin rounds: the member must stay out of the ring.
			time.Sleep(time.Second)
			if seed.Alive(id) || m.Alive("seed") {
				t.Errorf("a member with keys %d got in: seed sees %v, member sees %v", len(tc.keys), seed.Members(), m.Members())
			}
		})
	}
}

func TestGossipKeyringErrors(t *testing.T) {
	c := fastGossip("bad", RoleNode)
	c.Keyring = [][]byte{[]byte("short")}
	if _, err := StartGossip(c, nil); err == nil || !strings.Contains(err.Error(), "keyring") {
		t.Errorf("StartGossip with a 5-byte key: %v, want a keyring error", err)
	}
}
