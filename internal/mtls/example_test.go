package mtls_test

import (
	"context"
	"log/slog"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/moegrid/moegrid/internal/mtls"
	"github.com/moegrid/moegrid/internal/pki"
)

// An expert node serves Forward to routers only, health to anyone with a
// certificate from the cluster CA, and dials etcd with the same
// certificate. Its files live in a directory `moegrid certs` wrote.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src, err := mtls.NewSource(mtls.SourceConfig{
		Files:  mtls.FilesFor(pki.Dir("/etc/moegrid/certs"), "expert-3"),
		Logger: slog.Default(),
	})
	if err != nil {
		slog.Error("certificates", "err", err)
		return
	}
	go src.Run(ctx) // follows the files until ctx ends

	authz, err := mtls.NewAuthorizer(mtls.Policy{
		Allow: map[string][]pki.Role{"/moegrid.v1.Expert/*": {pki.RoleRouter}},
		Open:  []string{mtls.HealthService, mtls.ReflectionService},
	})
	if err != nil {
		slog.Error("policy", "err", err)
		return
	}
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(mtls.ServerTLS(src))),
		grpc.ChainUnaryInterceptor(authz.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(authz.StreamInterceptor()),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		slog.Error("listen", "err", err)
		return
	}
	go srv.Serve(ln)
	defer srv.Stop()

	// A router dialling it checks the node's certificate names the host.
	conn, err := grpc.NewClient(ln.Addr().String(),
		grpc.WithTransportCredentials(credentials.NewTLS(mtls.ClientTLS(src, "127.0.0.1"))))
	if err != nil {
		slog.Error("dial", "err", err)
		return
	}
	defer conn.Close()
}
