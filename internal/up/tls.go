package up

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"

	"github.com/moegrid/moegrid/internal/pki"
)

// The certificates of a local cluster: what `moegrid certs all` makes,
// with a CA that lasts across restarts and leaves issued afresh on every
// start.
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
)

// loopbackHosts are the names the serving certificates carry: children
// listen on loopback only.
var loopbackHosts = []string{"127.0.0.1", "localhost"}

// AdminCert is the name, in a local cluster's TLS directory, of the
// certificate the CLI uses to call it.
const AdminCert = "admin"

// ensureCerts makes dir's CA and gossip key if it has none, then issues a
// certificate per role named after it (router.crt, expertnode.crt, …).
func ensureCerts(dir pki.Dir, out io.Writer) error {
	ca, err := dir.LoadCA()
	if errors.Is(err, pki.ErrNoCA) {
		if ca, err = dir.Init(caValidity); err == nil {
			fmt.Fprintf(out, "made a cluster CA and gossip key in %s\n", dir)
		}
	}
	if err != nil {
		return fmt.Errorf("up: %w", err)
	}
	validity := min(leafValidity, time.Until(ca.Cert.NotAfter)-time.Hour)
	if validity <= 0 {
		return fmt.Errorf("up: the CA in %s expires at %s; remove the directory to make a new one", dir, ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	for _, r := range pki.Roles() {
		var hosts []string
		if r.Serves() {
			hosts = loopbackHosts
		}
		kp, err := ca.Issue(pki.LeafRequest{Identity: pki.Identity{Role: r, Name: string(r)}, Hosts: hosts, Validity: validity})
		if err != nil {
			return fmt.Errorf("up: %w", err)
		}
		if err := dir.WriteKeyPair(string(r), kp); err != nil {
			return fmt.Errorf("up: %w", err)
		}
	}
	return nil
}

// tlsArgs are the flags that give a child of role its certificate, the CA
// and the gossip key.
func tlsArgs(dir pki.Dir, role pki.Role) []string {
	return []string{
		"--tls-cert", dir.Cert(string(role)), "--tls-key", dir.Key(string(role)), "--tls-ca", dir.CACert(),
		"--gossip-key-file", dir.GossipKey(),
	}
}

// etcdTLS is the embedded etcd's TLS to clients and peers: its own
// certificate, and client certificates from the CA required.
func etcdTLS(dir pki.Dir) transport.TLSInfo {
	return transport.TLSInfo{
		CertFile:       dir.Cert(string(pki.RoleEtcd)),
		KeyFile:        dir.Key(string(pki.RoleEtcd)),
		TrustedCAFile:  dir.CACert(),
		ClientCertAuth: true,
	}
}

// probeTLS is what `moegrid up` checks the router's readiness with: the
// CA, and no client certificate, which the HTTP API does not need.
func probeTLS(dir pki.Dir) (*tls.Config, error) {
	ca, err := dir.LoadCA()
	if err != nil {
		return nil, fmt.Errorf("up: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}
