package integration

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/internal/mtls"
	"github.com/moegrid/moegrid/internal/pki"
	"github.com/moegrid/moegrid/internal/pki/pkitest"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// callAs dials addr with creds and makes one call of method there,
// returning its status code. Every call carries a deadline, so a refused
// handshake ends as Unavailable instead of hanging.
func callAs(t *testing.T, addr string, creds credentials.TransportCredentials, method string) codes.Code {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	switch method {
	case "Forward":
		_, err = moegridv1.NewExpertClient(conn).Forward(ctx, &moegridv1.ForwardRequest{})
	case "Drain":
		_, err = moegridv1.NewClusterClient(conn).Drain(ctx, &moegridv1.DrainRequest{NodeId: "expert-0"})
	case "Status":
		_, err = moegridv1.NewClusterClient(conn).Status(ctx, &moegridv1.StatusRequest{})
	case "Health":
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	case "Generate":
		var s grpc.ServerStreamingClient[moegridv1.GenerateResponse]
		s, err = moegridv1.NewGenerationClient(conn).Generate(ctx, &moegridv1.GenerateRequest{
			Prompt: &moegridv1.GenerateRequest_Ids{Ids: &moegridv1.TokenIDs{Ids: []uint32{1}}}, MaxTokens: 1,
		})
		if err == nil {
			for err == nil {
				_, err = s.Recv()
			}
			if errors.Is(err, io.EOF) {
				err = nil
			}
		}
	default:
		t.Fatalf("no call %s", method)
	}
	return status.Code(err)
}

// TestTLSRefusals checks every server of a TLS cluster against callers it
// must refuse: no certificate, another CA's certificate, and certificates
// of roles the authorization tables do not allow; and that the callers
// they name get in, and health stays open.
func TestTLSRefusals(t *testing.T) {
	tc := startCluster(t, clusterOptions{nodes: 1, minReplicas: 1})
	other := pkitest.New(t)
	as := func(role pki.Role) credentials.TransportCredentials {
		return credentials.NewTLS(tc.pki.ClientTLS(t, role, "caller-"+string(role)))
	}
	// A certificate from another CA, with the cluster's CA trusted, so that
	// only the server's check of the client can refuse it.
	foreignSrc := other.Source(t, pki.RoleAdmin, "admin")
	foreignCfg := mtls.ClientTLS(foreignSrc, "127.0.0.1")
	foreignCfg.VerifyConnection = tc.pki.ClientTLS(t, pki.RoleAdmin, "admin").VerifyConnection
	foreign := credentials.NewTLS(foreignCfg)
	noCert := credentials.NewTLS(&tls.Config{RootCAs: tc.pki.Pool(), ServerName: "127.0.0.1"})

	router, node, coord := tc.router.GRPCAddr(), tc.nodes[0].GRPCAddr(), tc.coordinator.GRPCAddr()
	for _, c := range []struct {
		name   string
		addr   string
		creds  credentials.TransportCredentials
		method string
		want   codes.Code
	}{
		{"router: no certificate", router, noCert, "Generate", codes.Unavailable},
		{"router: another CA", router, foreign, "Generate", codes.Unavailable},
		{"router: client generates", router, as(pki.RoleClient), "Generate", codes.OK},
		{"router: admin generates", router, as(pki.RoleAdmin), "Generate", codes.OK},
		{"router: expert node may not generate", router, as(pki.RoleExpertNode), "Generate", codes.PermissionDenied},
		{"router: health open to any role", router, as(pki.RoleExpertNode), "Health", codes.OK},

		{"node: no certificate", node, noCert, "Forward", codes.Unavailable},
		{"node: another CA", node, foreign, "Forward", codes.Unavailable},
		{"node: client may not call Forward", node, as(pki.RoleClient), "Forward", codes.PermissionDenied},
		{"node: admin may not call Forward", node, as(pki.RoleAdmin), "Forward", codes.PermissionDenied},
		// The empty request is refused by the service, past authorization.
		{"node: router calls Forward", node, as(pki.RoleRouter), "Forward", codes.InvalidArgument},
		// A node serves no Drain: the router's certificate gets nothing.
		{"node: router cannot drain", node, as(pki.RoleRouter), "Drain", codes.Unimplemented},
		{"node: health open to any role", node, as(pki.RoleClient), "Health", codes.OK},

		{"coordinator: no certificate", coord, noCert, "Status", codes.Unavailable},
		{"coordinator: another CA", coord, foreign, "Status", codes.Unavailable},
		{"coordinator: admin reads status", coord, as(pki.RoleAdmin), "Status", codes.OK},
		{"coordinator: router reads status", coord, as(pki.RoleRouter), "Status", codes.OK},
		{"coordinator: client may not read status", coord, as(pki.RoleClient), "Status", codes.PermissionDenied},
		{"coordinator: router cannot drain", coord, as(pki.RoleRouter), "Drain", codes.PermissionDenied},
		{"coordinator: coordinator cannot drain", coord, as(pki.RoleCoordinator), "Drain", codes.PermissionDenied},
		{"coordinator: admin drains", coord, as(pki.RoleAdmin), "Drain", codes.OK},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := callAs(t, c.addr, c.creds, c.method); got != c.want {
				t.Errorf("%s: %v, want %v", c.method, got, c.want)
			}
		})
	}

	t.Run("HTTP", func(t *testing.T) {
		// Probes carry no client certificate; plaintext is refused.
		for _, addr := range []string{tc.router.HTTPAddr(), tc.nodes[0].HTTPAddr(), tc.coordinator.HTTPAddr()} {
			resp, err := tc.http.Get("https://" + addr + "/healthz")
			if err != nil {
				t.Fatalf("https %s/healthz without a client certificate: %v", addr, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("https %s/healthz: %s", addr, resp.Status)
			}
			if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					t.Errorf("plaintext %s/healthz answered 200", addr)
				}
			}
		}
	})
}

// servedSerial is the serial of the certificate the server at addr shows a
// new connection.
func servedSerial(t *testing.T, p *pkitest.PKI, addr string) *big.Int {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, p.ClientTLS(t, pki.RoleAdmin, "serial-probe"))
	if err != nil {
		t.Fatalf("handshake with %s: %v", addr, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

// TestCertRotationMidStream replaces the router's certificate (which it
// also dials expert nodes with) and every expert node's server certificate
// while 16 streams run through the cluster: no request fails, and new
// connections get the new certificates.
func TestCertRotationMidStream(t *testing.T) {
	tc := startCluster(t, clusterOptions{nodes: 2, minReplicas: 1})
	addrs := []string{tc.router.GRPCAddr()}
	for _, n := range tc.nodes {
		addrs = append(addrs, n.GRPCAddr())
	}
	var before []*big.Int
	for _, a := range addrs {
		before = append(before, servedSerial(t, tc.pki, a))
	}

	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	var wg sync.WaitGroup
	var requests, failures atomic.Int64
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
				_, err := tc.generate(rctx, prompts[2], 64)
				cancel()
				requests.Add(1)
				if err != nil {
					failures.Add(1)
					t.Errorf("request during rotation: %v", err)
				}
			}
		}()
	}
	time.Sleep(time.Second)
	tc.pki.Issue(t, pki.RoleRouter, "router-0", 0)
	for i := range tc.nodes {
		tc.pki.Issue(t, pki.RoleExpertNode, fmt.Sprintf("expert-%d", i), 0)
	}
	// The sources look at their files every mtls.DefaultInterval.
	deadline := time.Now().Add(3 * mtls.DefaultInterval)
	for i, a := range addrs {
		for servedSerial(t, tc.pki, a).Cmp(before[i]) == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s still serves its old certificate %v after rotation", a, 3*mtls.DefaultInterval)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	time.Sleep(time.Second) // streams keep running on the rotated sources
	stop()
	wg.Wait()
	t.Logf("%d requests during the rotation, %d failed", requests.Load(), failures.Load())
	if requests.Load() < 16 {
		t.Errorf("only %d requests ran", requests.Load())
	}
	if _, err := tc.generate(t.Context(), prompts[1], 4); err != nil {
		t.Errorf("generation after the rotation: %v", err)
	}
}
