package grpcerr

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// failingHealth answers Check with a mapped error, or, for service
// "unmapped", an internal one; Watch always fails unmapped.
type failingHealth struct {
	healthpb.UnimplementedHealthServer
}

func (failingHealth) Check(_ context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if req.Service == "unmapped" {
		return nil, errors.New("disk /var/secret failed")
	}
	return nil, errBad
}

func (failingHealth) Watch(*healthpb.HealthCheckRequest, healthpb.Health_WatchServer) error {
	return errors.New("watch: /var/secret gone")
}

// TestInterceptors runs the boundary in a real gRPC server on loopback.
func TestInterceptors(t *testing.T) {
	var logs bytes.Buffer
	b := New(Table{{Err: errBad, Code: codes.InvalidArgument}}, slog.New(slog.NewTextHandler(&logs, nil)))
	srv := grpc.NewServer(grpc.UnaryInterceptor(b.Unary()), grpc.StreamInterceptor(b.Stream()))
	healthpb.RegisterHealthServer(srv, failingHealth{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)

	_, err = client.Check(t.Context(), &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("mapped unary: %v, want InvalidArgument", err)
	}
	_, err = client.Check(t.Context(), &healthpb.HealthCheckRequest{Service: "unmapped"})
	if status.Code(err) != codes.Internal || strings.Contains(err.Error(), "secret") {
		t.Errorf("unmapped unary: %v, want a bare Internal", err)
	}
	stream, err := client.Watch(t.Context(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	if status.Code(err) != codes.Internal || strings.Contains(err.Error(), "secret") {
		t.Errorf("unmapped stream: %v, want a bare Internal", err)
	}
	for _, method := range []string{"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"} {
		if !strings.Contains(logs.String(), method) {
			t.Errorf("log does not name %s: %s", method, logs.String())
		}
	}

	// A caller that gave up gets its own cancellation back.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := b.Unary()(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/m"}, func(context.Context, any) (any, error) {
		return nil, errors.New("x")
	}); status.Code(err) != codes.Canceled {
		t.Errorf("cancelled caller: %v, want Canceled", err)
	}
}
