package main

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/moegrid/moegrid/expertnode"
)

func newExpertnodeCmd() *cobra.Command {
	cfg := expertnode.DefaultConfig()
	var cf clusterFlags
	capacity := byteSize(cfg.CapacityBytes)
	cmd := &cobra.Command{
		Use:   "expertnode --model DIR --etcd-endpoints URLS",
		Short: "Run an expert node: hold the expert shards the placement assigns and serve Expert/Forward",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(cmd)
			if err != nil {
				return err
			}
			cfg.EtcdEndpoints, cfg.Prefix = cf.etcd, cf.prefix
			cfg.GossipAddr, cfg.GossipAdvertise, cfg.Join = cf.gossipAddr, cf.gossipAdvertise, cf.join
			cfg.CapacityBytes = int64(capacity)
			cfg.Security = cf.security
			n, err := expertnode.New(cfg, log, newRegistry())
			if err != nil {
				return err
			}
			return n.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	cf.register(f)
	f.StringVar(&cfg.ID, "id", defaultID(cfg.ID), "node ID, unique in the cluster and stable across restarts")
	f.StringVar(&cfg.ModelDir, "model", cfg.ModelDir, "checkpoint directory (config.json, *.safetensors) or GGUF file")
	f.StringVar(&cfg.GRPCAddr, "grpc-addr", cfg.GRPCAddr, "gRPC listen address")
	f.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "HTTP listen address for /metrics, /healthz, /readyz")
	f.StringVar(&cfg.AdvertiseAddr, "advertise-addr", cfg.AdvertiseAddr, "gRPC address routers dial (default: the bound address)")
	f.Var(&capacity, "capacity", "memory this node offers for expert weights, e.g. 80GiB")
	f.StringVar(&cfg.Device.Kind, "device-kind", cfg.Device.Kind, "device class reported to planners: cpu, cuda, …")
	f.StringVar(&cfg.Device.Name, "device-name", cfg.Device.Name, "device model reported to planners")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", cfg.LeaseTTL, "etcd lease time to live")
	f.IntVar(&cfg.QueueDepth, "queue-depth", cfg.QueueDepth, "Forward calls waiting or running before RESOURCE_EXHAUSTED")
	f.IntVar(&cfg.Workers, "workers", cfg.Workers, "Forward calls computed at once")
	f.DurationVar(&cfg.StopTimeout, "stop-timeout", cfg.StopTimeout, "graceful drain bound on SIGTERM")
	cmd.MarkFlagRequired("model")
	return cmd
}

// newRegistry is a process's metrics registry with the Go runtime and
// process collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}
