package cluster

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/moegrid/moegrid/cluster/etcdtest"
	"github.com/moegrid/moegrid/internal/mtls"
	"github.com/moegrid/moegrid/internal/pki"
)

// testPKI is a certificate directory as `moegrid certs init` makes it.
func testPKI(t *testing.T) (pki.Dir, *pki.CA) {
	t.Helper()
	d := pki.Dir(t.TempDir())
	ca, err := d.Init(24 * time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return d, ca
}

func issue(t *testing.T, d pki.Dir, ca *pki.CA, role pki.Role, name string) *mtls.Source {
	t.Helper()
	var hosts []string
	if role.Serves() {
		hosts = []string{"127.0.0.1"}
	}
	kp, err := ca.Issue(pki.LeafRequest{Identity: pki.Identity{Role: role, Name: name}, Hosts: hosts, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WriteKeyPair(name, kp); err != nil {
		t.Fatal(err)
	}
	src, err := mtls.NewSource(mtls.SourceConfig{Files: mtls.FilesFor(d, name)})
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// TestEtcdClientTLS checks that NewEtcdClient reaches an etcd that requires
// client certificates with one from its CA, and that a client without a
// certificate or with another CA's does not get in.
func TestEtcdClientTLS(t *testing.T) {
	dir, ca := testPKI(t)
	issue(t, dir, ca, pki.RoleEtcd, "etcd-0")
	coord := issue(t, dir, ca, pki.RoleCoordinator, "coordinator-0")
	otherDir, otherCA := testPKI(t)
	foreign := issue(t, otherDir, otherCA, pki.RoleCoordinator, "coordinator-0")
	srv := etcdtest.StartTLS(t, etcdtest.TLS{
		CertFile: dir.Cert("etcd-0"), KeyFile: dir.Key("etcd-0"), CAFile: dir.CACert(),
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
