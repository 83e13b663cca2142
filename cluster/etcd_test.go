package cluster

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/moegrid/moegrid/cluster/etcdtest"
	"github.com/moegrid/moegrid/internal/mtls"
	"github.com/moegrid/moegrid/internal/pki"
	"github.com/moegrid/moegrid/internal/pki/pkitest"
)

// TestEtcdClientTLS checks that NewEtcdClient reaches an etcd that requires
// client certificates with one from its CA, and that a client without a
// certificate or with another CA's does not get in.
func TestEtcdClientTLS(t *testing.T) {
	p := pkitest.New(t)
	etcdFiles := p.Issue(t, pki.RoleEtcd, "etcd-0", 0)
	coord := p.Source(t, pki.RoleCoordinator, "coordinator-0")
	foreign := pkitest.New(t).Source(t, pki.RoleCoordinator, "coordinator-0")
	srv := etcdtest.StartTLS(t, etcdtest.TLS{
		CertFile: etcdFiles.Cert, KeyFile: etcdFiles.Key, CAFile: etcdFiles.CA,
		Client: mtls.ClientTLS(coord, "127.0.0.1"),
	})
	withCA := func(src *mtls.Source) *tls.Config {
		cfg, err := mtls.EtcdClientTLS(src, srv.Endpoints())
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	noCert := &tls.Config{RootCAs: coord.CAPool(), ServerName: "127.0.0.1"}
	// Another CA's certificate, with our CA trusted so that only etcd's
	// check of the client can fail.
	foreignCfg := withCA(foreign)
	foreignCfg.VerifyConnection = withCA(coord).VerifyConnection

	for _, tc := range []struct {
		name string
		tls  *tls.Config
		ok   bool
	}{
		{"cluster certificate", withCA(coord), true},
		{"no certificate", noCert, false},
		{"another CA's certificate", foreignCfg, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cli, err := NewEtcdClient(srv.Endpoints(), WithEtcdTLS(tc.tls))
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
			defer cancel()
			_, err = cli.Put(ctx, "/tls/probe", "x")
			if tc.ok && err != nil {
				t.Errorf("Put: %v", err)
			}
			if !tc.ok && err == nil {
				t.Error("Put succeeded; etcd must refuse this client")
			}
		})
	}
}

func TestEtcdClientTLSEndpoints(t *testing.T) {
	if _, err := mtls.EtcdClientTLS(nil, []string{"https://etcd:2379"}); err == nil {
		t.Error("https endpoint without a certificate accepted")
	}
	if cfg, err := mtls.EtcdClientTLS(nil, []string{"http://127.0.0.1:2379"}); cfg != nil || err != nil {
		t.Errorf("plaintext endpoint: %v, %v; want no TLS", cfg, err)
	}
}

// TestEtcdClientAuth checks that WithEtcdAuth logs in to an etcd with auth
// enabled, and that a client without the password is refused.
func TestEtcdClientAuth(t *testing.T) {
	srv := etcdtest.Start(t)
	admin := srv.Client(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := admin.UserAdd(ctx, "root", "s3cret"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, user, password string
		ok                   bool
	}{
		{"right password", "root", "s3cret", true},
		{"wrong password", "root", "guess", false},
		{"no user", "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cli, err := NewEtcdClient(srv.Endpoints(), WithEtcdAuth(tc.user, tc.password))
			if err == nil {
				defer cli.Close()
				ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
				defer cancel()
				_, err = cli.Put(ctx, "/auth/probe", "x")
			}
			if tc.ok != (err == nil) {
				t.Errorf("Put as %q: %v, want success %v", tc.user, err, tc.ok)
			}
		})
	}
}
