package serve

import (
	"context"
	"crypto/tls"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/internal/mtls"
	"github.com/moegrid/moegrid/internal/pki"
	"github.com/moegrid/moegrid/internal/pki/pkitest"
)

// TestTLS checks a server with TLS set: gRPC refuses a caller without a
// certificate, lets any certificate from the CA reach health and
// reflection, and enforces the policy on everything else; HTTP answers
// over TLS without a client certificate and not in plaintext.
func TestTLS(t *testing.T) {
	p := pkitest.New(t)
	s, err := New(Config{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		TLS: p.Source(t, pki.RoleExpertNode, "expert-0"),
		// Only admins may list: the rest of health stays open.
		Policy: mtls.Policy{Allow: map[string][]pki.Role{"/grpc.health.v1.Health/List": {pki.RoleAdmin}}},
	}, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Bind(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	s.SetReady(true)

	dial := func(cfg *tls.Config) *grpc.ClientConn {
		conn, err := grpc.NewClient(s.GRPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	client := dial(p.ClientTLS(t, pki.RoleClient, "client-0"))
	admin := dial(p.ClientTLS(t, pki.RoleAdmin, "admin"))
	anonymous := dial(&tls.Config{RootCAs: p.Pool(), ServerName: "127.0.0.1"})
	call := func(conn *grpc.ClientConn, method string) codes.Code {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		var err error
		switch method {
		case "Check":
			_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		case "List":
			_, err = healthpb.NewHealthClient(conn).List(ctx, &healthpb.HealthListRequest{})
		case "Reflection":
			var rs grpc.BidiStreamingClient[reflectionpb.ServerReflectionRequest, reflectionpb.ServerReflectionResponse]
			if rs, err = reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx); err == nil {
				if err = rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err == nil {
					_, err = rs.Recv()
				}
			}
		}
		return status.Code(err)
	}
	for _, tc := range []struct {
		name   string
		conn   *grpc.ClientConn
		method string
		want   codes.Code
	}{
		{"health open", client, "Check", codes.OK},
		{"reflection open", client, "Reflection", codes.OK},
		{"policy denies the client", client, "List", codes.PermissionDenied},
		{"policy admits the admin", admin, "List", codes.OK},
		{"no certificate, no handshake", anonymous, "Check", codes.Unavailable},
	} {
		if got := call(tc.conn, tc.method); got != tc.want {
			t.Errorf("%s: %s = %v, want %v", tc.name, tc.method, got, tc.want)
		}
	}

	https := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.Pool()}}}
	resp, err := https.Get("https://" + s.HTTPAddr() + "/readyz")
	if err != nil {
		t.Fatalf("HTTPS without a client certificate: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("HTTPS /readyz: %s", resp.Status)
	}
	if resp, err := http.Get("http://" + s.HTTPAddr() + "/readyz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plaintext /readyz answered 200 on a TLS server")
		}
	}
}
