package integration

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// TestNoHolderPossibleFailsFast kills the only expert node while the
// coordinator runs: with no live node to re-place its experts on, /readyz
// turns false and gRPC health NOT_SERVING as soon as the router's
// connection to it breaks (well before gossip declares it dead), and a
// request arriving then fails UNAVAILABLE at once, naming the experts and
// why, instead of waiting out --wait-for-holder.
func TestNoHolderPossibleFailsFast(t *testing.T) {
	const wait = 20 * time.Second
	tc := startCluster(t, clusterOptions{nodes: 1, minReplicas: 1, childNodes: true, waitForHolder: wait})
	readyURL := tc.url(tc.router.HTTPAddr(), "/readyz")
	if _, err := tc.generate(t.Context(), prompts[2], 4); err != nil {
		t.Fatalf("before the fault: %v", err)
	}

	killed := time.Now()
	if err := tc.children["expert-0"].Process.Kill(); err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := tc.http.Get(readyURL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusServiceUnavailable {
				break
			}
		}
		if time.Since(killed) > wait {
			t.Fatalf("/readyz still not 503 %v after the kill (last: %v)", wait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("/readyz 503 %v after the kill", time.Since(killed))
	hc, err := healthpb.NewHealthClient(tc.conn).Check(t.Context(), &healthpb.HealthCheckRequest{Service: "moegrid.v1.Generation"})
	if err != nil || hc.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("gRPC health %v, %v; want NOT_SERVING", hc.GetStatus(), err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	start := time.Now()
	_, err = tc.generate(ctx, prompts[2], 4)
	elapsed := time.Since(start)
	t.Logf("request failed after %v: %v", elapsed, err)
	msg := status.Convert(err).Message()
	if status.Code(err) != codes.Unavailable || !strings.Contains(msg, "no live replica") || !strings.Contains(msg, "of layer 0") || !strings.Contains(msg, "no live node has the capacity") {
		t.Fatalf("got %v, want UNAVAILABLE naming the experts of layer 0 and no capacity", err)
	}
	if elapsed > time.Second {
		t.Errorf("failed after %v, want under 1 s", elapsed)
	}
}
