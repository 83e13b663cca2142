package genclient

import (
	"bytes"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// fakeRouter streams the tokens that follow the request's resume_tokens in
// 0, 1, 2, …, up to tokens of them, then fails with code (or finishes when
// code is OK); it keeps the requests it got.
type fakeRouter struct {
	moegridv1.UnimplementedGenerationServer
	tokens int
	code   codes.Code

	mu   sync.Mutex // protects reqs
	reqs []*moegridv1.GenerateRequest
}

func (r *fakeRouter) Generate(req *moegridv1.GenerateRequest, stream grpc.ServerStreamingServer[moegridv1.GenerateResponse]) error {
	r.mu.Lock()
	r.reqs = append(r.reqs, req)
	r.mu.Unlock()
	for i := len(req.ResumeTokens); i < r.tokens; i++ {
		msg := &moegridv1.GenerateResponse{TokenIds: []uint32{uint32(i)}, Text: "x"}
		if i == len(req.ResumeTokens) {
			msg.PromptRoutes = []*moegridv1.TokenRoutes{{}}
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
	if r.code != codes.OK {
		return status.Error(r.code, "router: "+r.code.String())
	}
	return stream.Send(&moegridv1.GenerateResponse{FinishReason: moegridv1.FinishReason_FINISH_REASON_LENGTH})
}

func (r *fakeRouter) requests() []*moegridv1.GenerateRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reqs
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

func dialInsecure(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// TestStreamFailover: a request goes to the next router only when the one
// before failed it UNAVAILABLE: from the start if nothing had arrived,
// resumed after the tokens that had otherwise; every token is delivered
// once, and the prompt's routes only from the first stream.
func TestStreamFailover(t *testing.T) {
	for _, tc := range []struct {
		name       string
		first      *fakeRouter
		wantCode   codes.Code
		wantResume []uint32 // the next router's resume_tokens; nil: not called
		wantWarn   string
	}{
		{"unavailable before the first token", &fakeRouter{tokens: 0, code: codes.Unavailable}, codes.OK, []uint32{}, "trying"},
		{"unavailable after two tokens", &fakeRouter{tokens: 2, code: codes.Unavailable}, codes.OK, []uint32{0, 1}, "resuming after 2 tokens on"},
		{"invalid argument", &fakeRouter{code: codes.InvalidArgument}, codes.InvalidArgument, nil, ""},
		{"resource exhausted", &fakeRouter{code: codes.ResourceExhausted}, codes.ResourceExhausted, nil, ""},
		{"success", &fakeRouter{tokens: 5}, codes.OK, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := &fakeRouter{tokens: 5}
			addrs := []string{serveRouter(t, tc.first), serveRouter(t, next)}
			var warn bytes.Buffer
			var tokens []uint32
			promptRoutes := 0
			err := Stream(t.Context(), addrs, dialInsecure, &moegridv1.GenerateRequest{Temperature: 0.5}, &warn, func(m *moegridv1.GenerateResponse) {
				tokens = append(tokens, m.TokenIds...)
				promptRoutes += len(m.PromptRoutes)
			})
			if status.Code(err) != tc.wantCode {
				t.Errorf("err = %v, want %v", err, tc.wantCode)
			}
			reqs := next.requests()
			switch {
			case tc.wantResume == nil && len(reqs) != 0:
				t.Errorf("next router called with %v", reqs)
			case tc.wantResume != nil && len(reqs) != 1:
				t.Errorf("next router called %d times, want once", len(reqs))
			case tc.wantResume != nil:
				if !slices.Equal(reqs[0].ResumeTokens, tc.wantResume) {
					t.Errorf("next router resumed after %v, want %v", reqs[0].ResumeTokens, tc.wantResume)
				}
				if first := tc.first.requests(); reqs[0].Seed == nil || first[0].GetSeed() != reqs[0].GetSeed() {
					t.Errorf("seeds %v then %v: want one seed, the same on both routers", first[0].Seed, reqs[0].Seed)
				}
			}
			if tc.wantCode == codes.OK && !slices.Equal(tokens, []uint32{0, 1, 2, 3, 4}) {
				t.Errorf("tokens delivered %v, want 0 to 4 once each", tokens)
			}
			if tc.wantCode == codes.OK && promptRoutes != 1 {
				t.Errorf("prompt routes delivered %d times, want once", promptRoutes)
			}
			if tc.wantWarn != "" && !strings.Contains(warn.String(), tc.wantWarn+" "+addrs[1]) {
				t.Errorf("the failover is not reported: %q", warn.String())
			}
		})
	}
}
