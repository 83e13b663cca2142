package mtls

import (
	"context"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/moegrid/moegrid/internal/pki"
)

// TestEtcd checks that etcd takes the certificates pki makes, for client
// and peer TLS with client certificates required, and that an etcd client
// dialling with ClientTLS gets in while another CA's certificate does not.
func TestEtcd(t *testing.T) {
	p := newTestPKI(t)
	p.issue(t, pki.RoleEtcd, "etcd-0")
	p.issue(t, pki.RoleCoordinator, "coordinator-0")
	other := newTestPKI(t)
	other.issue(t, pki.RoleCoordinator, "coordinator-0")

	addrs := freeAddrs(t, 2)
	tlsInfo := transport.TLSInfo{
		CertFile:       p.dir.Cert("etcd-0"),
		KeyFile:        p.dir.Key("etcd-0"),
		TrustedCAFile:  p.dir.CACert(),
		ClientCertAuth: true,
	}
	cfg := embed.NewConfig()
	cfg.Name = "etcd-0"
	cfg.Dir = t.TempDir()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = true
	cfg.TickMs, cfg.ElectionMs = 10, 100
	cu := url.URL{Scheme: "https", Host: addrs[0]}
	pu := url.URL{Scheme: "https", Host: addrs[1]}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ClientTLSInfo, cfg.PeerTLSInfo = tlsInfo, tlsInfo
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.Close()
		<-e.Err()
	})
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd not ready")
	}

	connect := func(t *testing.T, src *Source) error {
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   []string{cu.String()},
			TLS:         ClientTLS(src, "127.0.0.1"),
			DialTimeout: 5 * time.Second,
			Logger:      zap.NewNop(),
		})
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		if _, err := c.Put(ctx, "/moegrid/test", "x"); err != nil {
			return err
		}
		_, err = c.Get(ctx, "/moegrid/test")
		return err
	}
	if err := connect(t, p.source(t, "coordinator-0")); err != nil {
		t.Errorf("coordinator certificate: %v", err)
	}
	foreign, err := NewSource(SourceConfig{Files: Files{Cert: other.dir.Cert("coordinator-0"), Key: other.dir.Key("coordinator-0"), CA: p.dir.CACert()}})
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, addrs[0], ClientTLS(foreign, "127.0.0.1")); err == nil || !strings.Contains(err.Error(), "unknown certificate authority") {
		t.Errorf("handshake with another CA's certificate: %v, want etcd to refuse it", err)
	}
}

// freeAddrs returns loopback addresses with ports the kernel picked, for
// etcd, which needs its peer address before it listens.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, l.Addr().String())
		defer l.Close()
	}
	return addrs
}
