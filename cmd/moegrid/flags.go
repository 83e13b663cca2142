package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/spf13/pflag"

	"github.com/moegrid/moegrid/cluster"
)

// clusterFlags are the flags every cluster member shares: where etcd is,
// which cluster, and how to gossip.
type clusterFlags struct {
	etcd            []string
	prefix          string
	gossipAddr      string
	gossipAdvertise string
	join            []string
}

func (c *clusterFlags) register(f *pflag.FlagSet) {
	f.StringSliceVar(&c.etcd, "etcd-endpoints", []string{"http://127.0.0.1:2379"}, "etcd client URLs, comma separated")
	f.StringVar(&c.prefix, "prefix", cluster.DefaultPrefix, "etcd key prefix of the cluster (one cluster per prefix)")
	f.StringVar(&c.gossipAddr, "gossip-addr", "127.0.0.1:0", "memberlist bind address host:port (port 0 picks one)")
	f.StringVar(&c.gossipAdvertise, "gossip-advertise", "", "memberlist address others reach this process at (default: the bound address)")
	f.StringSliceVar(&c.join, "join", nil, "gossip addresses to join besides those registered in etcd")
}

// defaultID is the host name, which in a Kubernetes StatefulSet is the
// stable pod name.
func defaultID(fallback string) string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return strings.ToLower(h)
	}
	return fallback
}

// byteSize is a flag value in bytes that accepts "16GiB", "80GB" or plain
// numbers.
type byteSize int64

func (b *byteSize) String() string { return humanize.IBytes(uint64(*b)) }
func (b *byteSize) Type() string   { return "bytes" }
func (b *byteSize) Set(s string) error {
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return fmt.Errorf("%q is not a size: %w", s, err)
	}
	*b = byteSize(n)
	return nil
}
