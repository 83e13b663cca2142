package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// JoinConfig says how a component joins the cluster.
type JoinConfig struct {
	// EtcdEndpoints are the etcd client URLs; Prefix the cluster's key
	// prefix.
	EtcdEndpoints []string
	Prefix        string
	// Etcd are the options of the etcd client: its TLS and login (see
	// EtcdSecurity).
	Etcd []EtcdOption
	// Gossip configures the component's gossip member. When its Seeds is
	// nil, the seeds are the gossip addresses of the node records in etcd.
	Gossip GossipConfig
}

// Membership is a component's place in the cluster: its etcd client, the
// store over the cluster's prefix, and its gossip member. Close releases
// all of them.
type Membership struct {
	Store  *Store
	Gossip *Gossip

	cli    *clientv3.Client
	cancel context.CancelFunc // stops following the seeds
}

// Join connects to etcd, waiting (and logging) while it cannot be reached,
// checks the prefix, and then joins the gossip ring. It returns ctx's error
// if ctx is done first. When Join fails it holds nothing.
func Join(ctx context.Context, cfg JoinConfig, log *slog.Logger) (*Membership, error) {
	cli, err := NewEtcdClient(cfg.EtcdEndpoints, cfg.Etcd...)
	if err != nil {
		return nil, err
	}
	st, err := Connect(ctx, cli, cfg.Prefix, log)
	if err != nil {
		cli.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	// The seeds are followed for the member's lifetime, not the caller's
	// ctx, which may be only the join's.
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	gcfg := cfg.Gossip
	if gcfg.Seeds == nil {
		gcfg.Seeds = FollowGossipSeeds(life, st)
	}
	g, err := StartGossip(gcfg, log)
	if err != nil {
		cancel()
		cli.Close()
		return nil, fmt.Errorf("cluster: join gossip: %w", err)
	}
	return &Membership{Store: st, Gossip: g, cli: cli, cancel: cancel}, nil
}

// Close leaves the gossip ring and closes the etcd client.
func (m *Membership) Close() error {
	gerr := m.Gossip.Close()
	m.cancel()
	return errors.Join(gerr, m.cli.Close())
}
