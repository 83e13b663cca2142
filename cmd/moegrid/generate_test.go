package main

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// fakeRouter is a Generation server that streams tokens tokens, then fails
// with code (or finishes when code is OK), and counts its calls.
type fakeRouter struct {
	moegridv1.UnimplementedGenerationServer
	tokens int
	code   codes.Code
	calls  atomic.Int32
}

func (r *fakeRouter) Generate(_ *moegridv1.GenerateRequest, stream grpc.ServerStreamingServer[moegridv1.GenerateResponse]) error {
	r.calls.Add(1)
	for i := range r.tokens {
		if err := stream.Send(&moegridv1.GenerateResponse{TokenIds: []uint32{uint32(i)}, Text: "x"}); err != nil {
			return err
		}
	}
	if r.code != codes.OK {
		return status.Error(r.code, "router: "+r.code.String())
	}
	return stream.Send(&moegridv1.GenerateResponse{FinishReason: moegridv1.FinishReason_FINISH_REASON_LENGTH})
}

func serveRouter(t *testing.T, r *fakeRouter) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	moegridv1.RegisterGenerationServer(srv, r)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// TestRouterAddrs checks --addr parsing.
func TestRouterAddrs(t *testing.T) {
	got, err := routerAddrs("a:1, b:2,c:3")
	if err != nil || strings.Join(got, " ") != "a:1 b:2 c:3" {
		t.Errorf("routerAddrs = %v, %v", got, err)
	}
	if _, err := routerAddrs("a:1,,b:2"); err == nil || !strings.Contains(err.Error(), "empty address") {
		t.Errorf("an empty address in the list: %v", err)
	}
}
