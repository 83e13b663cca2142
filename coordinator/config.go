package coordinator

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/internal/mtls"
)

// Config configures one coordinator replica.
type Config struct {
	// ID names the replica in the election and in gossip; unique in the
	// cluster across roles. Default "coordinator-" + the host name.
	ID string
	// EtcdEndpoints are etcd's client URLs, e.g. "http://127.0.0.1:2379".
	EtcdEndpoints []string
	// Prefix is the cluster's etcd key prefix. Default cluster.DefaultPrefix.
	Prefix string
	// GRPCAddr is the host:port of the Cluster, health and reflection
	// services; port 0 picks a free port. Default "127.0.0.1:7070".
	GRPCAddr string
	// HTTPAddr is the host:port of /metrics, /healthz and /readyz; empty
	// disables them. Default "127.0.0.1:7071".
	HTTPAddr string
	// Gossip configures the replica's membership in the gossip ring (bind
	// and advertise addresses, seeds, timings); ID, Role and Seeds are set
	// by the coordinator. Zero timings take the LAN defaults.
	Gossip cluster.GossipConfig
	// GossipDisabled leaves gossip out: failures are then detected by lease
	// expiry alone and Status reports every registered node alive.
	GossipDisabled bool
	// LeaseTTL is the time to live of the replica's election lease: how long
	// after a leader crashes another replica takes over. Rounded up to whole
	// seconds, at least 1 s. Default 10 s.
	LeaseTTL time.Duration
	// MinReplicas is the number of distinct nodes every shard is held on.
	// Default 1.
	MinReplicas int
	// MaxReplicas caps the replicas of a shard; 0 means no cap.
	MaxReplicas int
	// LoadTolerance is the placement's hysteresis on load statistics, a
	// fraction; 0 means placement.DefaultLoadTolerance.
	LoadTolerance float64
	// LoadRebalanceInterval is the least time between two placement changes
	// made for load alone. Default 5 min.
	LoadRebalanceInterval time.Duration
	// Fingerprint, if set, is the model checkpoint to place; nodes serving
	// another are left out. Empty: the checkpoint of the current placement,
	// or for a new cluster the one most nodes serve.
	Fingerprint string
	// ResyncInterval is how often the leader reconciles without any event.
	// Default 30 s.
	ResyncInterval time.Duration
	// Debounce is how long the leader waits after an event for more before
	// reconciling, so that a burst costs one reconcile. Default 100 ms.
	Debounce time.Duration
	// ShutdownTimeout bounds the graceful stop of the servers. Default 5 s.
	ShutdownTimeout time.Duration
	// Security is the coordinator's certificate, the CA it trusts and the
	// gossip keyring, or Insecure. Admins may call Status and Drain,
	// routers Status.
	Security mtls.Security
}

// DefaultConfig returns the defaults for a local cluster.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	id := "coordinator"
	if host != "" {
		id += "-" + sanitizeID(host)
	}
	g := cluster.DefaultGossipConfig(id, cluster.RoleCoordinator)
	return Config{
		ID:                    id,
		EtcdEndpoints:         []string{"http://127.0.0.1:2379"},
		Prefix:                cluster.DefaultPrefix,
		GRPCAddr:              "127.0.0.1:7070",
		HTTPAddr:              "127.0.0.1:7071",
		Gossip:                g,
		LeaseTTL:              10 * time.Second,
		MinReplicas:           1,
		LoadRebalanceInterval: 5 * time.Minute,
		ResyncInterval:        30 * time.Second,
		Debounce:              100 * time.Millisecond,
		ShutdownTimeout:       5 * time.Second,
	}
}

func sanitizeID(s string) string {
	s = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-' {
			return r
		}
		return '-'
	}, s)
	if len(s) > 100 {
		s = s[:100]
	}
	return s
}

// Validate checks the configuration and returns every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if err := cluster.ValidateID(c.ID); err != nil {
		errs = append(errs, fmt.Errorf("id: %w", err))
	}
	if len(c.EtcdEndpoints) == 0 {
		errs = append(errs, errors.New("etcd endpoints: none given"))
	}
	if _, err := cluster.NewKeys(c.Prefix); err != nil {
		errs = append(errs, fmt.Errorf("prefix: %w", err))
	}
	if _, _, err := net.SplitHostPort(c.GRPCAddr); err != nil {
		errs = append(errs, fmt.Errorf("grpc address %q: %w", c.GRPCAddr, err))
	}
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			errs = append(errs, fmt.Errorf("http address %q: %w", c.HTTPAddr, err))
		}
	}
	if c.LeaseTTL < time.Second {
		errs = append(errs, fmt.Errorf("lease ttl %v: at least 1s", c.LeaseTTL))
	}
	if c.MinReplicas < 1 {
		errs = append(errs, fmt.Errorf("min replicas %d: at least 1", c.MinReplicas))
	}
	if c.MaxReplicas != 0 && c.MaxReplicas < c.MinReplicas {
		errs = append(errs, fmt.Errorf("max replicas %d below min replicas %d", c.MaxReplicas, c.MinReplicas))
	}
	if c.LoadTolerance < 0 {
		errs = append(errs, fmt.Errorf("load tolerance %v: must not be negative", c.LoadTolerance))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"load rebalance interval", c.LoadRebalanceInterval}, {"resync interval", c.ResyncInterval},
		{"debounce", c.Debounce}, {"shutdown timeout", c.ShutdownTimeout},
	} {
		if d.v < 0 || (d.v == 0 && d.name != "load rebalance interval" && d.name != "debounce") {
			errs = append(errs, fmt.Errorf("%s %v: must be positive", d.name, d.v))
		}
	}
	if err := c.Security.Validate(!c.GossipDisabled); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
