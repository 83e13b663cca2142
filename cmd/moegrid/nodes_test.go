package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/moegrid/moegrid/coordinator"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// statusStub is a Cluster server that answers a fixed status and knows one
// node.
type statusStub struct {
	moegridv1.UnimplementedClusterServer
	resp    *moegridv1.StatusResponse
	drained []string
}

func (s *statusStub) Status(context.Context, *moegridv1.StatusRequest) (*moegridv1.StatusResponse, error) {
	return s.resp, nil
}

func (s *statusStub) Drain(_ context.Context, r *moegridv1.DrainRequest) (*moegridv1.DrainResponse, error) {
	if r.NodeId != "expert-0" {
		return nil, status.Errorf(codes.NotFound, "cluster: node not found: %s", r.NodeId)
	}
	s.drained = append(s.drained, r.NodeId)
	return &moegridv1.DrainResponse{}, nil
}

func serveStatusStub(t *testing.T, stub *statusStub) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	moegridv1.RegisterClusterServer(srv, stub)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func runMoegrid(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

// TestNodesCommand runs `moegrid nodes` against a real gRPC server holding
// the coordinator package's golden status: --output json prints exactly the
// golden JSON, the table is the coordinator's rendering.
func TestNodesCommand(t *testing.T) {
	golden, err := os.ReadFile("../../coordinator/testdata/status.json.golden")
	if err != nil {
		t.Fatal(err)
	}
	var resp moegridv1.StatusResponse
	if err := protojson.Unmarshal(golden, &resp); err != nil {
		t.Fatal(err)
	}
	for _, n := range resp.Nodes {
		n.LastHeartbeat = nil // the table shows heartbeat ages relative to now
	}
	stub := &statusStub{resp: &resp}
	addr := serveStatusStub(t, stub)

	out, err := runMoegrid(t, "nodes", "--insecure", "--coordinator", addr, "--output", "json")
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	coordinator.WriteStatusJSON(&want, &resp)
	if diff := cmp.Diff(want.String(), out); diff != "" {
		t.Errorf("json (-want +got):\n%s", diff)
	}

	out, err = runMoegrid(t, "nodes", "--insecure", "--coordinator", addr)
	if err != nil {
		t.Fatal(err)
	}
	want.Reset()
	coordinator.WriteStatusTable(&want, &resp, time.Now())
	if diff := cmp.Diff(want.String(), out); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
	if !regexp.MustCompile(`(?m)^NODE +STATE +ALIVE +SHARDS +LOADED`).MatchString(out) {
		t.Errorf("table header missing:\n%s", out)
	}

	if _, err := runMoegrid(t, "nodes", "--insecure", "--coordinator", addr, "-o", "yaml"); err == nil || !strings.Contains(err.Error(), "want table or json") {
		t.Errorf("bad --output: %v", err)
	}

	out, err = runMoegrid(t, "drain", "expert-0", "--insecure", "--coordinator", addr)
	if err != nil || out != "node expert-0 draining\n" || len(stub.drained) != 1 {
		t.Errorf("drain: %q, %v, drained %v", out, err, stub.drained)
	}
	_, err = runMoegrid(t, "drain", "nobody", "--insecure", "--coordinator", addr)
	if err == nil || !strings.Contains(err.Error(), "NotFound") || !strings.Contains(err.Error(), "nobody") {
		t.Errorf("drain of an unknown node: %v", err)
	}
}
