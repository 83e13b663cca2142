package mtls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/moegrid/moegrid/internal/pki"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testPKI is a certificate directory with a CA, as `moegrid certs init`
// makes it.
type testPKI struct {
	dir pki.Dir
	ca  *pki.CA
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	d := pki.Dir(t.TempDir())
	ca, err := d.Init(24 * time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{dir: d, ca: ca}
}

// issue writes a leaf for role/name into the directory and returns it.
func (p *testPKI) issue(t *testing.T, role pki.Role, name string) *x509.Certificate {
	t.Helper()
	var hosts []string
	if role.Serves() {
		hosts = []string{"localhost", "127.0.0.1"}
	}
	kp, err := p.ca.Issue(pki.LeafRequest{Identity: pki.Identity{Role: role, Name: name}, Hosts: hosts, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.dir.WriteKeyPair(name, kp); err != nil {
		t.Fatal(err)
	}
	return kp.Cert
}

// issueAnonymous writes a client certificate signed by the CA but with no
// moegrid identity, as some other tool might make.
func (p *testPKI) issueAnonymous(t *testing.T, name string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca.Cert, key.Public(), p.ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, p.dir.Cert(name), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeFile(t, p.dir.Key(name), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
}

func (p *testPKI) source(t *testing.T, name string) *Source {
	t.Helper()
	src, err := NewSource(SourceConfig{Files: FilesFor(p.dir, name), Interval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// writeFile replaces path atomically, as a Secret update or `moegrid certs`
// does.
func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".new")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// testServer is a real gRPC server with the health service behind
// ServerTLS and an Authorizer.
type testServer struct {
	addr   string
	health *health.Server
}

func startServer(t *testing.T, src *Source, policy Policy) *testServer {
	t.Helper()
	authz, err := NewAuthorizer(policy)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(ServerTLS(src))),
		grpc.UnaryInterceptor(authz.UnaryInterceptor()),
		grpc.StreamInterceptor(authz.StreamInterceptor()),
	)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return &testServer{addr: ln.Addr().String(), health: hs}
}

func dial(t *testing.T, addr string, src *Source) healthpb.HealthClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(ClientTLS(src, "127.0.0.1"))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}
