package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/spf13/pflag"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/internal/mtls"
)

// clusterFlags are the flags every cluster member shares: where etcd is,
// which cluster, how to gossip, and the transport security of all three.
type clusterFlags struct {
	etcd            []string
	prefix          string
	gossipAddr      string
	gossipAdvertise string
	join            []string
	security        mtls.Security
}

func (c *clusterFlags) register(f *pflag.FlagSet) {
	f.StringSliceVar(&c.etcd, "etcd-endpoints", []string{"http://127.0.0.1:2379"}, "etcd client URLs, comma separated")
	f.StringVar(&c.prefix, "prefix", cluster.DefaultPrefix, "etcd key prefix of the cluster (one cluster per prefix)")
	f.StringVar(&c.gossipAddr, "gossip-addr", "127.0.0.1:0", "memberlist bind address host:port (port 0 picks one)")
	f.StringVar(&c.gossipAdvertise, "gossip-advertise", "", "memberlist address others reach this process at (default: the bound address)")
	f.StringSliceVar(&c.join, "join", nil, "gossip addresses to join besides those registered in etcd")
	s := &c.security
	registerIdentityFlags(f, &s.Files, &s.Insecure)
	f.StringVar(&s.Etcd.Cert, "etcd-cert", "", "certificate shown to https:// etcd endpoints (default: --tls-cert)")
	f.StringVar(&s.Etcd.Key, "etcd-key", "", "key of --etcd-cert (default: --tls-key)")
	f.StringVar(&s.Etcd.CA, "etcd-ca", "", "CA bundle etcd's certificate must chain to (default: --tls-ca)")
	f.StringVar(&s.EtcdUsername, "etcd-username", "", "etcd user, when etcd auth is on (with --etcd-password-file)")
	f.StringVar(&s.EtcdPasswordFile, "etcd-password-file", "", "file holding the password of --etcd-username")
	f.StringVar(&s.GossipKeyFile, "gossip-key-file", "", "memberlist keyring: one base64 32-byte key per line, the first encrypts, all decrypt (required unless --insecure)")
}

// registerIdentityFlags registers the flags of a process's certificate,
// key and trusted CAs, and --insecure, on servers and on the CLI commands
// that dial them alike.
func registerIdentityFlags(f *pflag.FlagSet, files *mtls.Files, insecure *bool) {
	f.StringVar(&files.Cert, "tls-cert", "", "PEM certificate this process serves and presents when it dials (reloaded on change)")
	f.StringVar(&files.Key, "tls-key", "", "PEM private key of --tls-cert")
	f.StringVar(&files.CA, "tls-ca", "", "PEM bundle of the CAs whose certificates this process trusts")
	f.BoolVar(insecure, "insecure", false, "plaintext everywhere and no identity checks (for local experiments only)")
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
