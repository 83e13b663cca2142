package main

import (
	"strings"
	"testing"

	"google.golang.org/grpc"

	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// fakeRouter is a Generation server that streams tokens tokens, then
// finishes.
type fakeRouter struct {
	moegridv1.UnimplementedGenerationServer
	tokens int
}

func (r *fakeRouter) Generate(_ *moegridv1.GenerateRequest, stream grpc.ServerStreamingServer[moegridv1.GenerateResponse]) error {
	for i := range r.tokens {
		if err := stream.Send(&moegridv1.GenerateResponse{TokenIds: []uint32{uint32(i)}, Text: "x"}); err != nil {
			return err
		}
	}
	return stream.Send(&moegridv1.GenerateResponse{FinishReason: moegridv1.FinishReason_FINISH_REASON_LENGTH})
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
