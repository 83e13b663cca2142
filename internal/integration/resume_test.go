package integration

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/moegrid/moegrid/internal/genclient"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
	"github.com/moegrid/moegrid/router"
)

// TestStreamResumesOnAnotherRouter: a client streaming from two routers
// (moegrid generate --addr A,B) whose router is stopped mid-stream resumes
// on the other and delivers exactly the tokens and text of an
// uninterrupted stream, each once, greedy and seeded.
func TestStreamResumesOnAnotherRouter(t *testing.T) {
	tc := startCluster(t, clusterOptions{nodes: 2, minReplicas: 1, insecure: true})
	dial := func(addr string) (*grpc.ClientConn, error) {
		return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	prompt := []int{1, 415, 2929, 349, 264}
	seed := uint64(42)
	for _, tc2 := range []struct {
		name string
		req  *moegridv1.GenerateRequest
	}{
		{"greedy", &moegridv1.GenerateRequest{MaxTokens: 48, IgnoreEos: true}},
		{"seeded", &moegridv1.GenerateRequest{MaxTokens: 48, IgnoreEos: true, Temperature: 0.8, TopK: 50, Seed: &seed}},
	} {
		t.Run(tc2.name, func(t *testing.T) {
			req := tc2.req
			req.Prompt = &moegridv1.GenerateRequest_Ids{Ids: &moegridv1.TokenIDs{Ids: toU32(prompt)}}
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			// Every expert has a live holder again (a busy machine can make
			// gossip suspect a node for a while).
			tc.waitReady(t, tc.url(tc.router.HTTPAddr(), "/readyz"), 60*time.Second)
			var want []uint32
			var wantText strings.Builder
			if err := genclient.Stream(ctx, []string{tc.router.GRPCAddr()}, dial, req, nil, func(m *moegridv1.GenerateResponse) {
				want = append(want, m.TokenIds...)
				wantText.WriteString(m.Text)
			}); err != nil {
				t.Fatal(err)
			}

			doomed, stop := startRouter(t, tc, "router-doomed")
			var got []uint32
			var text strings.Builder
			var warn bytes.Buffer
			const cutAfter = 5
			err := genclient.Stream(ctx, []string{doomed.GRPCAddr(), tc.router.GRPCAddr()}, dial, req, &warn, func(m *moegridv1.GenerateResponse) {
				got = append(got, m.TokenIds...)
				text.WriteString(m.Text)
				if len(got) >= cutAfter {
					stop() // returns at once; the router dies in the background
				}
			})
			if err != nil {
				t.Fatalf("%v (failover: %q)", err, warn.String())
			}
			if !strings.Contains(warn.String(), "resuming after") {
				t.Fatalf("the stream was not cut and resumed: %q", warn.String())
			}
			t.Log(strings.TrimSpace(warn.String()))
			if !slices.Equal(got, want) {
				t.Errorf("resumed stream's tokens differ from an uninterrupted one's:\n got %v\nwant %v", got, want)
			}
			if text.String() != wantText.String() {
				t.Errorf("resumed stream's text %q, uninterrupted %q", text.String(), wantText.String())
			}
		})
	}
}

// startRouter runs another router on tc's cluster, with a short graceful
// stop so that stop cuts its streams, as a router's death does. stop cancels
// it without waiting (it may be called from a stream's callback) and may
// be called more than once; the test's cleanup waits for it.
func startRouter(t *testing.T, tc *testCluster, id string) (r *router.Router, stop func()) {
	t.Helper()
	cfg := router.DefaultConfig()
	cfg.ID = id
	cfg.ModelDir = tinyDir
	cfg.GRPCAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.EtcdEndpoints = tc.etcd.Endpoints()
	cfg.LeaseTTL = 3 * time.Second
	cfg.Dispatch.WaitForHolder = 20 * time.Second
	cfg.StopTimeout = 10 * time.Millisecond
	cfg.Security.Insecure = true
	r, err := router.New(cfg, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("%s: %v", id, err)
		}
	})
	awaitReady(t, id, r.Ready(), 60*time.Second)
	tc.waitReady(t, tc.url(r.HTTPAddr(), "/readyz"), 60*time.Second)
	return r, func() { once.Do(cancel) }
}
