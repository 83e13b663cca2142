// Package pkitest makes real certificate directories for tests: a cluster
// CA, gossip key and role certificates for loopback, as `moegrid certs`
// writes them, and the mtls settings that use them. Nothing outside tests
// should import it.
package pkitest

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/moegrid/moegrid/internal/mtls"
	"github.com/moegrid/moegrid/internal/pki"
)

// PKI is a certificate directory with its CA.
type PKI struct {
	Dir pki.Dir
	CA  *pki.CA
}

// New makes a directory in t.TempDir() with a CA valid for a day and a
// gossip key.
func New(t testing.TB) *PKI {
	t.Helper()
	d := pki.Dir(t.TempDir())
	ca, err := d.Init(24 * time.Hour)
	if err != nil {
		t.Fatalf("pkitest: %v", err)
	}
	return &PKI{Dir: d, CA: ca}
}

// Issue writes a certificate for role/name, valid for validity (an hour
// when 0) and, for roles that serve, for 127.0.0.1 and localhost. It
// replaces an earlier one of the same name atomically, which is how a test
// rotates a certificate under a running component.
func (p *PKI) Issue(t testing.TB, role pki.Role, name string, validity time.Duration) mtls.Files {
	t.Helper()
	if validity == 0 {
		validity = time.Hour
	}
	var hosts []string
	if role.Serves() {
		hosts = []string{"127.0.0.1", "localhost"}
	}
	kp, err := p.CA.Issue(pki.LeafRequest{Identity: pki.Identity{Role: role, Name: name}, Hosts: hosts, Validity: validity})
	if err != nil {
		t.Fatalf("pkitest: %v", err)
	}
	if err := p.Dir.WriteKeyPair(name, kp); err != nil {
		t.Fatalf("pkitest: %v", err)
	}
	return mtls.FilesFor(p.Dir, name)
}

// Security issues a certificate for role/name and returns the settings a
// component runs with: that certificate, the CA and the gossip key.
func (p *PKI) Security(t testing.TB, role pki.Role, name string) mtls.Security {
	t.Helper()
	return mtls.Security{Files: p.Issue(t, role, name, 0), GossipKeyFile: p.Dir.GossipKey()}
}

// Source issues a certificate for role/name and returns a Source of it
// that reloads every 10 ms when run.
func (p *PKI) Source(t testing.TB, role pki.Role, name string) *mtls.Source {
	t.Helper()
	src, err := mtls.NewSource(mtls.SourceConfig{Files: p.Issue(t, role, name, 0), Interval: 10 * time.Millisecond})
	if err != nil {
		t.Fatalf("pkitest: %v", err)
	}
	return src
}

// ClientTLS issues a certificate for role/name and returns the TLS of a
// client dialling 127.0.0.1 with it.
func (p *PKI) ClientTLS(t testing.TB, role pki.Role, name string) *tls.Config {
	t.Helper()
	return mtls.ClientTLS(p.Source(t, role, name), "127.0.0.1")
}

// Pool is a pool holding the CA, for clients that check servers only.
func (p *PKI) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.CA.Cert)
	return pool
}
