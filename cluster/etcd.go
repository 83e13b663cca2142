package cluster

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/moegrid/moegrid/internal/mtls"
)

// EtcdOption changes how NewEtcdClient reaches etcd.
type EtcdOption func(*clientv3.Config)

// WithEtcdTLS dials https:// endpoints with cfg (a client certificate for
// etcd's ClientCertAuth, and the CA its certificate chains to). A nil cfg
// changes nothing.
func WithEtcdTLS(cfg *tls.Config) EtcdOption {
	return func(c *clientv3.Config) { c.TLS = cfg }
}

// WithEtcdAuth logs in as username with password, for an etcd with auth
// enabled. An empty username changes nothing.
func WithEtcdAuth(username, password string) EtcdOption {
	return func(c *clientv3.Config) {
		if username != "" {
			c.Username, c.Password = username, password
		}
	}
}

// NewEtcdClient returns an etcd client for endpoints (URLs such as
// "http://127.0.0.1:2379") tuned for the control plane: it does not block
// while etcd is down, notices a dead connection within seconds, and retries a
// lost connection at most 2 s apart, so that leases and watches come back
// promptly after an etcd restart. The caller closes it.
func NewEtcdClient(endpoints []string, opts ...EtcdOption) (*clientv3.Client, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("cluster: no etcd endpoints")
	}
	cfg := clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Logger:               zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 2 * time.Second,
		})},
	}
	for _, o := range opts {
		o(&cfg)
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("cluster: etcd client for %v: %w", endpoints, err)
	}
	return cli, nil
}

// EtcdSecurity is how a component with security sec and certificate
// source src (nil when insecure) reaches etcd at endpoints: the options for
// NewEtcdClient, and the Source of etcd's own files when they differ from
// src's, which the caller runs (mtls.RunSources) to follow them.
func EtcdSecurity(sec mtls.Security, src *mtls.Source, endpoints []string, log *slog.Logger) ([]EtcdOption, *mtls.Source, error) {
	etcdSrc, err := sec.EtcdSource(src, log)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster: etcd certificate: %w", err)
	}
	cfg, err := mtls.EtcdClientTLS(etcdSrc, endpoints)
	if err != nil {
		return nil, nil, err
	}
	password, err := sec.EtcdPassword()
	if err != nil {
		return nil, nil, err
	}
	if etcdSrc == src {
		etcdSrc = nil
	}
	return []EtcdOption{WithEtcdTLS(cfg), WithEtcdAuth(sec.EtcdUsername, password)}, etcdSrc, nil
}
