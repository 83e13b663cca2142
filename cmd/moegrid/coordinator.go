package main

import (
	"github.com/spf13/cobra"

	"github.com/moegrid/moegrid/coordinator"
)

func newCoordinatorCmd() *cobra.Command {
	cfg := coordinator.DefaultConfig()
	var cf clusterFlags
	var noGossip bool
	cmd := &cobra.Command{
		Use:   "coordinator --etcd-endpoints URLS",
		Short: "Run a coordinator replica: elect a leader, place expert shards on nodes, serve the cluster status",
		Long: `Run a coordinator replica. Run several for availability: they elect one
leader in etcd, which watches the nodes and writes the placement of expert
shards; every replica serves moegrid.v1.Cluster (Status, Drain) on --grpc-addr
and /metrics, /healthz, /readyz on --http-addr.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(cmd)
			if err != nil {
				return err
			}
			cfg.EtcdEndpoints, cfg.Prefix = cf.etcd, cf.prefix
			cfg.Gossip.BindAddr, cfg.Gossip.AdvertiseAddr, cfg.Gossip.Join = cf.gossipAddr, cf.gossipAdvertise, cf.join
			cfg.GossipDisabled = noGossip
			cfg.Security = cf.security
			c, err := coordinator.New(cfg, log, newRegistry())
			if err != nil {
				return err
			}
			return c.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	cf.register(f)
	f.StringVar(&cfg.ID, "id", cfg.ID, "replica ID, unique in the cluster")
	f.StringVar(&cfg.GRPCAddr, "grpc-addr", cfg.GRPCAddr, "gRPC listen address (Cluster, health, reflection)")
	f.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, `HTTP listen address for /metrics, /healthz, /readyz ("" disables)`)
	f.BoolVar(&noGossip, "no-gossip", false, "do not join the gossip ring: detect failures by lease expiry alone")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", cfg.LeaseTTL, "election lease time to live: how soon another replica takes over from a crashed leader")
	f.IntVar(&cfg.MinReplicas, "min-replicas", cfg.MinReplicas, "distinct nodes every shard is held on")
	f.IntVar(&cfg.MaxReplicas, "max-replicas", cfg.MaxReplicas, "cap on the replicas of a shard (0: no cap)")
	f.Float64Var(&cfg.LoadTolerance, "load-tolerance", cfg.LoadTolerance, "hysteresis on load statistics, a fraction (0: the placement default)")
	f.DurationVar(&cfg.LoadRebalanceInterval, "load-rebalance-interval", cfg.LoadRebalanceInterval, "least time between placement changes made for load alone")
	f.StringVar(&cfg.Fingerprint, "fingerprint", cfg.Fingerprint, "model checkpoint fingerprint to place (default: the current one, or the one most nodes serve)")
	f.DurationVar(&cfg.ResyncInterval, "resync-interval", cfg.ResyncInterval, "reconcile at least this often")
	return cmd
}
