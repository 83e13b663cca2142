package mtls

import (
	"context"
	"crypto/tls"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/internal/pki"
)

var testPolicy = Policy{
	Allow: map[string][]pki.Role{
		"/grpc.health.v1.Health/Check": {pki.RoleRouter},
		"/grpc.health.v1.Health/Watch": {pki.RoleRouter, pki.RoleAdmin},
	},
	Open: []string{ReflectionService},
}

func TestAuthorization(t *testing.T) {
	p := newTestPKI(t)
	p.issue(t, pki.RoleExpertNode, "expert-0")
	srv := startServer(t, p.source(t, "expert-0"), testPolicy)
	p.issue(t, pki.RoleRouter, "router-0")
	p.issue(t, pki.RoleAdmin, "admin")
	p.issue(t, pki.RoleClient, "client-0")
	p.issueAnonymous(t, "anonymous")

	check := func(ctx context.Context, c healthpb.HealthClient) error {
		_, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	watch := func(ctx context.Context, c healthpb.HealthClient) error {
		s, err := c.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	list := func(ctx context.Context, c healthpb.HealthClient) error {
		_, err := c.List(ctx, &healthpb.HealthListRequest{})
		return err
	}
	for _, tc := range []struct {
		name   string
		caller string
		call   func(context.Context, healthpb.HealthClient) error
		code   codes.Code
		msg    string
	}{
		{"router may check", "router-0", check, codes.OK, ""},
		{"client may not check", "client-0", check, codes.PermissionDenied, "/grpc.health.v1.Health/Check is not allowed for role client (caller spiffe://moegrid/client/client-0)"},
		{"admin may not check", "admin", check, codes.PermissionDenied, "role admin"},
		{"admin may watch", "admin", watch, codes.OK, ""},
		{"client may not watch", "client-0", watch, codes.PermissionDenied, "/grpc.health.v1.Health/Watch is not allowed for role client"},
		{"unlisted method denied", "router-0", list, codes.PermissionDenied, "/grpc.health.v1.Health/List is not allowed for role router"},
		{"no identity", "anonymous", check, codes.Unauthenticated, "needs a client certificate with a moegrid identity"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			err := tc.call(ctx, dial(t, srv.addr, p.source(t, tc.caller)))
			st := status.Convert(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Errorf("got %v %q, want %v containing %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
		})
	}
}

func TestAuthorizeOpenAndExact(t *testing.T) {
	a, err := NewAuthorizer(Policy{
		Allow: map[string][]pki.Role{"/s.S/*": {pki.RoleAdmin}, "/s.S/Drain": {pki.RoleCoordinator}, "/open.O/Guarded": {pki.RoleAdmin}},
		Open:  []string{"/open.O/*", "/s.S/Ping"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		method string
		code   codes.Code
	}{
		{"/open.O/Anything", codes.OK},
		{"/s.S/Ping", codes.OK},
		{"/open.O/Guarded", codes.Unauthenticated}, // an exact entry overrides its open service
		{"/s.S/Drain", codes.Unauthenticated},
		{"/other.X/Y", codes.Unauthenticated},
		{"garbage", codes.Unauthenticated},
	} {
		if got := status.Code(a.Authorize(t.Context(), tc.method)); got != tc.code {
			t.Errorf("Authorize(%s) without a peer = %v, want %v", tc.method, got, tc.code)
		}
	}
}

func TestNewAuthorizerErrors(t *testing.T) {
	_, err := NewAuthorizer(Policy{
		Allow: map[string][]pki.Role{"Check": {pki.RoleRouter}, "/a.B/C": {"janitor"}, "/a.B/D": nil, "/a.B/E": {pki.RoleAdmin}},
		Open:  []string{"/a.B/E", "/x/"},
	})
	for _, want := range []string{`method "Check"`, `unknown role "janitor"`, "/a.B/D allows no role", "/a.B/E both as open", `method "/x/"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NewAuthorizer error %v, want it to name %q", err, want)
		}
	}
}

// handshake connects to addr with cfg and reads, which is where a TLS 1.3
// client learns that the server refused its certificate.
func handshake(t *testing.T, addr string, cfg *tls.Config) error {
	t.Helper()
	d := tls.Dialer{Config: cfg}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	return err
}

func TestHandshakeRefused(t *testing.T) {
	p := newTestPKI(t)
	p.issue(t, pki.RoleExpertNode, "expert-0")
	srv := startServer(t, p.source(t, "expert-0"), testPolicy)
	p.issue(t, pki.RoleRouter, "router-0")

	other := newTestPKI(t)
	other.issue(t, pki.RoleRouter, "router-0")
	// A router holding another CA's certificate but trusting this CA, so
	// that only the server's check can refuse it.
	foreign, err := NewSource(SourceConfig{Files: Files{Cert: other.dir.Cert("router-0"), Key: other.dir.Key("router-0"), CA: p.dir.CACert()}})
	if err != nil {
		t.Fatal(err)
	}
	good := p.source(t, "router-0")
	noCert := &tls.Config{RootCAs: good.CAPool(), ServerName: "127.0.0.1", NextProtos: []string{"h2"}}

	for _, tc := range []struct {
		name string
		cfg  *tls.Config
		err  string
	}{
		{"no client certificate", noCert, "certificate required"},
		{"another CA's certificate", ClientTLS(foreign, "127.0.0.1"), "unknown certificate authority"},
		{"server not trusted by client", ClientTLS(other.source(t, "router-0"), "127.0.0.1"), "certificate signed by unknown authority"},
		{"wrong server name", ClientTLS(good, "expert.elsewhere"), "not expert.elsewhere"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := handshake(t, srv.addr, tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("handshake: %v, want an error containing %q", err, tc.err)
			}
		})
	}
	t.Run("gRPC call without a trusted certificate", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		_, err := dial(t, srv.addr, foreign).Check(ctx, &healthpb.HealthCheckRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("Check with another CA's certificate: %v, want Unavailable", err)
		}
	})
	// gRPC servers refuse connections that did not negotiate h2.
	ok := ClientTLS(good, "127.0.0.1")
	ok.NextProtos = []string{"h2"}
	if err := handshake(t, srv.addr, ok); err != nil {
		t.Errorf("handshake with a good certificate: %v, want the server's first bytes", err)
	}
}

// waitSerial waits for the source to load the certificate with the serial.
func waitSerial(t *testing.T, src *Source, serial *big.Int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for src.Leaf().SerialNumber.Cmp(serial) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("source still serves serial %x, want %x", src.Leaf().SerialNumber, serial)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func peerSerial(t *testing.T, ctx context.Context, c healthpb.HealthClient) *big.Int {
	t.Helper()
	var p peer.Peer
	if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		t.Fatal(err)
	}
	return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].SerialNumber
}

func TestRotation(t *testing.T) {
	p := newTestPKI(t)
	oldServer := p.issue(t, pki.RoleExpertNode, "expert-0")
	p.issue(t, pki.RoleRouter, "router-0")
	serverSrc := p.source(t, "expert-0")
	clientSrc := p.source(t, "router-0")

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 2)
	go func() { done <- serverSrc.Run(runCtx) }()
	go func() { done <- clientSrc.Run(runCtx) }()
	defer func() {
		stop()
		for range 2 {
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	}()

	srv := startServer(t, serverSrc, testPolicy)
	oldConn := dial(t, srv.addr, clientSrc)
	stream, err := oldConn.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := stream.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first Watch message: %v, %v", r, err)
	}
	if got := peerSerial(t, ctx, oldConn); got.Cmp(oldServer.SerialNumber) != 0 {
		t.Fatalf("server serial %x, want %x", got, oldServer.SerialNumber)
	}

	newServer := p.issue(t, pki.RoleExpertNode, "expert-0")
	newClient := p.issue(t, pki.RoleRouter, "router-0")
	waitSerial(t, serverSrc, newServer.SerialNumber)
	waitSerial(t, clientSrc, newClient.SerialNumber)

	// The call in flight goes on over its connection with the old
	// certificates.
	srv.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	if r, err := stream.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Watch after rotation: %v, %v; want the in-flight stream to carry on", r, err)
	}
	if got := peerSerial(t, ctx, oldConn); got.Cmp(oldServer.SerialNumber) != 0 {
		t.Errorf("existing connection's server serial %x, want the old %x", got, oldServer.SerialNumber)
	}
	// A new connection gets the new certificates, on both sides.
	if got := peerSerial(t, ctx, dial(t, srv.addr, clientSrc)); got.Cmp(newServer.SerialNumber) != 0 {
		t.Errorf("new connection's server serial %x, want the new %x", got, newServer.SerialNumber)
	}
	if got := clientSrc.Certificate().Leaf.SerialNumber; got.Cmp(newClient.SerialNumber) != 0 {
		t.Errorf("client presents serial %x, want the new %x", got, newClient.SerialNumber)
	}
}

func TestCARotation(t *testing.T) {
	p := newTestPKI(t)
	p.issue(t, pki.RoleExpertNode, "expert-0")
	serverSrc := p.source(t, "expert-0")
	srv := startServer(t, serverSrc, testPolicy)

	// A router with a certificate from the next CA, trusting both.
	next := newTestPKI(t)
	next.issue(t, pki.RoleRouter, "router-0")
	caA, err := os.ReadFile(p.dir.CACert())
	if err != nil {
		t.Fatal(err)
	}
	caB, err := os.ReadFile(next.dir.CACert())
	if err != nil {
		t.Fatal(err)
	}
	bundle := append(append([]byte{}, caA...), caB...)
	bundlePath := filepath.Join(t.TempDir(), "bundle.crt")
	writeFile(t, bundlePath, bundle)
	router, err := NewSource(SourceConfig{Files: Files{Cert: next.dir.Cert("router-0"), Key: next.dir.Key("router-0"), CA: bundlePath}})
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := dial(t, srv.addr, router).Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("before the server trusts the new CA: %v, want Unavailable", err)
	}
	writeFile(t, p.dir.CACert(), bundle)
	if changed, err := serverSrc.Reload(); !changed || err != nil {
		t.Fatalf("Reload = %v, %v", changed, err)
	}
	if _, err := dial(t, srv.addr, router).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("after the server trusts the new CA: %v", err)
	}
}

func TestReloadKeepsGoodCertificate(t *testing.T) {
	p := newTestPKI(t)
	good := p.issue(t, pki.RoleRouter, "router-0")
	src := p.source(t, "router-0")
	if changed, err := src.Reload(); changed || err != nil {
		t.Errorf("Reload of unchanged files = %v, %v; want false, nil", changed, err)
	}
	files := FilesFor(p.dir, "router-0")
	saved := map[string][]byte{}
	for _, f := range []string{files.Cert, files.Key, files.CA} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		saved[f] = b
	}

	for _, tc := range []struct {
		name  string
		write func(t *testing.T)
		err   string
	}{
		{"garbage certificate", func(t *testing.T) { writeFile(t, files.Cert, []byte("not a certificate")) }, "failed to find any PEM data"},
		{"key of another certificate", func(t *testing.T) {
			p.issue(t, pki.RoleRouter, "router-0")
			writeFile(t, files.Key, saved[files.Key])
		}, "private key does not match public key"},
		{"empty CA bundle", func(t *testing.T) { writeFile(t, files.CA, nil) }, "CA bundle holds no certificate"},
		{"missing key", func(t *testing.T) { os.Remove(files.Key) }, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.write(t)
			changed, err := src.Reload()
			if !changed || err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Reload = %v, %v; want true and an error containing %q", changed, err, tc.err)
			}
			if changed, err := src.Reload(); changed || err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("second Reload of the same bad files = %v, %v; want unchanged and the error again", changed, err)
			}
			if got := src.Leaf().SerialNumber; got.Cmp(good.SerialNumber) != 0 {
				t.Errorf("serving serial %x, want the good %x kept", got, good.SerialNumber)
			}
			for f, b := range saved {
				writeFile(t, f, b)
			}
			if changed, err := src.Reload(); !changed || err != nil {
				t.Errorf("Reload of the good files again = %v, %v", changed, err)
			}
		})
	}
	next := p.issue(t, pki.RoleRouter, "router-0")
	if changed, err := src.Reload(); !changed || err != nil {
		t.Fatalf("Reload of a new good pair = %v, %v", changed, err)
	}
	if got := src.Leaf().SerialNumber; got.Cmp(next.SerialNumber) != 0 {
		t.Errorf("serial %x, want %x", got, next.SerialNumber)
	}
}

// TestSymlinkSwap follows a Kubernetes Secret volume update: the files are
// links through ..data, which is swapped to a new timestamped directory.
func TestSymlinkSwap(t *testing.T) {
	p := newTestPKI(t)
	vol := t.TempDir()
	version := func(name string) string {
		dir := filepath.Join(vol, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for from, to := range map[string]string{p.dir.Cert("router-0"): "tls.crt", p.dir.Key("router-0"): "tls.key", p.dir.CACert(): "ca.crt"} {
			b, err := os.ReadFile(from)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, to), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return name
	}
	first := p.issue(t, pki.RoleRouter, "router-0")
	if err := os.Symlink(version("..2026_12_02_10_00_00.1"), filepath.Join(vol, "..data")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if err := os.Symlink(filepath.Join("..data", f), filepath.Join(vol, f)); err != nil {
			t.Fatal(err)
		}
	}
	src, err := NewSource(SourceConfig{Files: Files{Cert: filepath.Join(vol, "tls.crt"), Key: filepath.Join(vol, "tls.key"), CA: filepath.Join(vol, "ca.crt")}})
	if err != nil {
		t.Fatal(err)
	}
	if src.Leaf().SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatal("source did not load the first version")
	}

	second := p.issue(t, pki.RoleRouter, "router-0")
	if err := os.Symlink(version("..2026_12_02_11_00_00.2"), filepath.Join(vol, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(vol, "..data_tmp"), filepath.Join(vol, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(vol, "..2026_12_02_10_00_00.1")); err != nil {
		t.Fatal(err)
	}
	if changed, err := src.Reload(); !changed || err != nil {
		t.Fatalf("Reload after the swap = %v, %v", changed, err)
	}
	if got := src.Leaf().SerialNumber; got.Cmp(second.SerialNumber) != 0 {
		t.Errorf("serial %x after the swap, want %x", got, second.SerialNumber)
	}
}

func TestNewSourceErrors(t *testing.T) {
	p := newTestPKI(t)
	for _, tc := range []struct {
		name string
		cfg  SourceConfig
		err  string
	}{
		{"no files", SourceConfig{}, "needs a certificate, key and CA file"},
		{"missing files", SourceConfig{Files: FilesFor(p.dir, "nobody")}, "nobody.crt"},
		{"negative interval", SourceConfig{Files: FilesFor(p.dir, "x"), Interval: -time.Second}, "interval -1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewSource(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("NewSource: %v, want %q", err, tc.err)
			}
		})
	}
}

func TestRequireRole(t *testing.T) {
	p := newTestPKI(t)
	p.issue(t, pki.RoleCoordinator, "coordinator-0")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: RequireRole(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "drained")
	}), pki.RoleAdmin), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = hs.Serve(tls.NewListener(ln, ServerTLS(p.source(t, "coordinator-0"))))
	}()
	t.Cleanup(func() {
		hs.Close()
		<-done
	})
	p.issue(t, pki.RoleAdmin, "admin")
	p.issue(t, pki.RoleClient, "client-0")
	p.issueAnonymous(t, "anonymous")
	for _, tc := range []struct {
		caller string
		code   int
		body   string
	}{
		{"admin", http.StatusOK, "drained"},
		{"client-0", http.StatusForbidden, "POST /drain is not allowed for role client"},
		{"anonymous", http.StatusUnauthorized, "client certificate with a moegrid identity is required"},
	} {
		t.Run(tc.caller, func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: ClientTLS(p.source(t, tc.caller), "127.0.0.1"), ForceAttemptHTTP2: true}
			defer tr.CloseIdleConnections()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+ln.Addr().String()+"/drain", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := (&http.Client{Transport: tr}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code || !strings.Contains(string(body), tc.body) {
				t.Errorf("got %d %q, want %d containing %q", resp.StatusCode, body, tc.code, tc.body)
			}
			if resp.ProtoMajor != 2 {
				t.Errorf("protocol %s, want HTTP/2 negotiated through ServerTLS", resp.Proto)
			}
		})
	}
}
