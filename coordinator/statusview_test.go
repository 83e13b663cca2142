package coordinator

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/coordinator/placement"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// fixedNow is the time the golden status is rendered at.
var fixedNow = time.Date(2025, 6, 1, 12, 0, 30, 0, time.UTC)

// goldenStatus is a status with every kind of row: ready with loaded
// shards, joining, drained, gossip-dead, down, ejected and suspect by
// routers, and split experts.
func goldenStatus() *moegridv1.StatusResponse {
	sh := func(e, f, end uint32) *moegridv1.Shard {
		return &moegridv1.Shard{Expert: e, FirstLayer: f, EndLayer: end}
	}
	hb := func(ago time.Duration) *timestamppb.Timestamp { return timestamppb.New(fixedNow.Add(-ago)) }
	const gib = 1 << 30
	return &moegridv1.StatusResponse{
		Leader:           "coordinator-0",
		PlacementVersion: 7,
		PlacementError:   "placement: insufficient capacity: need 10737418240 (10.0 GiB), have 8589934592 (8.0 GiB)",
		Model:            &moegridv1.ModelShape{Experts: 8, Layers: 32, BytesPerExpertLayer: 352321536},
		Nodes: []*moegridv1.NodeStatus{
			{Id: "expert-0", GrpcAddr: "10.0.0.10:7100", GossipAddr: "10.0.0.10:7946", State: "ready", Alive: true,
				Device: "cuda (NVIDIA H100 80GB HBM3)", MemoryCapacityBytes: 80 * gib, MemoryUsedBytes: 21 * gib,
				Assigned: []*moegridv1.Shard{sh(0, 0, 32), sh(1, 0, 32)}, Loaded: []*moegridv1.Shard{sh(0, 0, 32), sh(1, 0, 32)},
				Load: &moegridv1.NodeLoad{ForwardCallsTotal: 120345, RowsTotal: 9876543, Inflight: 3, RowsPerSecond: 1523.25}, LastHeartbeat: hb(2 * time.Second)},
			{Id: "expert-5", GrpcAddr: "10.0.0.15:7100", State: "ready", Alive: true, Device: "cpu",
				MemoryCapacityBytes: 16 * gib, MemoryUsedBytes: 10 * gib, Assigned: []*moegridv1.Shard{sh(4, 0, 32)},
				Loaded: []*moegridv1.Shard{sh(4, 0, 32)}, Load: &moegridv1.NodeLoad{}, LastHeartbeat: hb(time.Second),
				RouterView: &moegridv1.RouterView{State: "ejected", Routers: 2, Since: hb(40 * time.Second),
					LastError: "rpc error: code = Unavailable desc = connection refused"}},
			{Id: "expert-6", GrpcAddr: "10.0.0.16:7100", State: "draining", Alive: true, Device: "cpu",
				MemoryCapacityBytes: 16 * gib, MemoryUsedBytes: 10 * gib, Assigned: []*moegridv1.Shard{sh(5, 0, 32)},
				Loaded: []*moegridv1.Shard{sh(5, 0, 32)}, Load: &moegridv1.NodeLoad{}, LastHeartbeat: hb(time.Second),
				RouterView: &moegridv1.RouterView{State: "suspect", Routers: 1, Since: hb(3 * time.Second),
					LastError: "rpc error: code = DeadlineExceeded desc = node expert-6 too slow"}},
			{Id: "expert-1", GrpcAddr: "10.0.0.11:7100", State: "joining", Alive: true, Device: "cpu (amd64)", Insecure: true,
				MemoryCapacityBytes: 16 * gib, MemoryUsedBytes: 5 * gib, Assigned: []*moegridv1.Shard{sh(2, 0, 16)},
				Load: &moegridv1.NodeLoad{}, LastHeartbeat: hb(1500 * time.Millisecond),
				LoadError: &moegridv1.LoadError{Message: "model: open /models/mixtral/model-00003-of-00019.safetensors:\nno such file or directory", Time: hb(12 * time.Second), Attempts: 4}},
			{Id: "expert-2", GrpcAddr: "10.0.0.12:7100", State: "draining", Alive: true, Device: "cpu",
				MemoryCapacityBytes: 16 * gib, Loaded: []*moegridv1.Shard{sh(2, 16, 32)},
				Load: &moegridv1.NodeLoad{ForwardCallsTotal: 5, RowsTotal: 40, RowsPerSecond: 0}, LastHeartbeat: hb(3 * time.Minute)},
			{Id: "expert-3", GrpcAddr: "10.0.0.13:7100", State: "ready", Alive: false, Device: "cpu",
				MemoryCapacityBytes: 16 * gib, MemoryUsedBytes: 5 * gib, Assigned: []*moegridv1.Shard{sh(2, 16, 32)},
				Loaded: []*moegridv1.Shard{sh(2, 16, 32)}, Load: &moegridv1.NodeLoad{}, LastHeartbeat: hb(26 * time.Hour)},
			{Id: "expert-4", State: StateDown, MemoryUsedBytes: 10 * gib, Assigned: []*moegridv1.Shard{sh(3, 0, 32)}},
		},
		Shards: []*moegridv1.ShardStatus{
			{Shard: sh(0, 0, 32), Nodes: []string{"expert-0"}, LoadedOn: []string{"expert-0"}},
			{Shard: sh(1, 0, 32), Nodes: []string{"expert-0"}, LoadedOn: []string{"expert-0"}},
			{Shard: sh(2, 0, 16), Nodes: []string{"expert-1"}},
			{Shard: sh(2, 16, 32), Nodes: []string{"expert-3"}, LoadedOn: []string{"expert-3"}},
			{Shard: sh(3, 0, 32), Nodes: []string{"expert-4"}},
		},
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs (-want +got):\n%s", path, diff)
	}
}

func TestWriteStatusGolden(t *testing.T) {
	var table, js bytes.Buffer
	if err := WriteStatusTable(&table, goldenStatus(), fixedNow); err != nil {
		t.Fatal(err)
	}
	golden(t, "status.table.golden", table.Bytes())
	if err := WriteStatusJSON(&js, goldenStatus()); err != nil {
		t.Fatal(err)
	}
	golden(t, "status.json.golden", js.Bytes())
	// The JSON is the protobuf mapping: it reads back to the same message.
	var back moegridv1.StatusResponse
	if err := protojson.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(goldenStatus(), &back, protocmp.Transform()); diff != "" {
		t.Errorf("JSON round trip (-want +got):\n%s", diff)
	}
	// An empty cluster renders too.
	table.Reset()
	if err := WriteStatusTable(&table, &moegridv1.StatusResponse{}, fixedNow); err != nil {
		t.Fatal(err)
	}
	golden(t, "status-empty.table.golden", table.Bytes())
}

func TestBuildStatus(t *testing.T) {
	snap := snapshot(cluster.PlacementRecord{}, nodesN(3, 8*expertBytes)...)
	d := decide(snap, never, basePolicy, t0)
	apply(snap, d, t0)
	snap.Leader = "coord"
	// n1 reports one of its shards loaded; n2 is drained; n3 is gone but
	// still placed; n4 registered after the placement.
	mine := snap.Placement.ShardsOf("n1")
	snap.Nodes[0].Loaded = mine[:1]
	snap.Nodes[0].State = cluster.StateReady
	snap.Drains["n2"] = cluster.DrainMark{NodeID: "n2", NodeStarted: snap.Nodes[1].Started}
	snap.Nodes = append(snap.Nodes[:2], nodeRecord("n4", expertBytes))
	snap.Nodes[2].GossipAddr = "127.0.0.1:1"
	loadErr := cluster.LoadError{Message: "open model.safetensors: no such file", Time: t0, Attempts: 3}
	snap.Nodes[1].LoadError = &loadErr
	snap.Loads = []cluster.LoadRecord{{RouterID: "r1", Fingerprint: "f", TokensPerSecond: []float64{0},
		Unhealthy: []cluster.NodeVerdict{{NodeID: "n1", State: cluster.VerdictEjected, Since: t0, LastError: "refused"}}}}
	dead := func(n cluster.NodeRecord) bool { return n.ID == "n4" }
	st := buildStatus(snap, dead)
	for _, n := range st.Nodes {
		var want *moegridv1.RouterView
		if n.Id == "n1" {
			want = &moegridv1.RouterView{State: cluster.VerdictEjected, Routers: 1, Since: timestamppb.New(t0), LastError: "refused"}
		}
		if diff := cmp.Diff(want, n.RouterView, protocmp.Transform()); diff != "" {
			t.Errorf("%s: router view (-want +got):\n%s", n.Id, diff)
		}
	}
	var got []string
	for _, n := range st.Nodes {
		got = append(got, fmt.Sprintf("%s %s alive=%v assigned=%d loaded=%d used=%d cap=%d",
			n.Id, n.State, n.Alive, len(n.Assigned), len(n.Loaded), n.MemoryUsedBytes, n.MemoryCapacityBytes))
	}
	want := []string{
		fmt.Sprintf("n1 ready alive=true assigned=%d loaded=1 used=%d cap=%d", len(mine), int64(len(mine))*expertBytes, 8*expertBytes),
		fmt.Sprintf("n2 draining alive=true assigned=%d loaded=0 used=%d cap=%d", len(snap.Placement.ShardsOf("n2")), snap.Placement.BytesOn("n2"), 8*expertBytes),
		fmt.Sprintf("n3 down alive=false assigned=%d loaded=0 used=%d cap=0", len(snap.Placement.ShardsOf("n3")), snap.Placement.BytesOn("n3")),
		fmt.Sprintf("n4 joining alive=false assigned=0 loaded=0 used=0 cap=%d", expertBytes),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("nodes (-want +got):\n%s", diff)
	}
	wantErr := &moegridv1.LoadError{Message: loadErr.Message, Time: timestamppb.New(t0), Attempts: 3}
	for _, n := range st.Nodes {
		var want *moegridv1.LoadError
		if n.Id == "n2" {
			want = wantErr
		}
		if diff := cmp.Diff(want, n.LoadError, protocmp.Transform()); diff != "" {
			t.Errorf("%s: load error (-want +got):\n%s", n.Id, diff)
		}
	}
	if st.Leader != "coord" || st.PlacementVersion != 1 || len(st.Shards) != testModel.Experts {
		t.Errorf("status %v", st)
	}
	for _, s := range st.Shards {
		if s.Shard.Expert == uint32(mine[0].Expert) {
			if len(s.LoadedOn) != 1 || s.LoadedOn[0] != "n1" {
				t.Errorf("shard %v loaded on %v", s.Shard, s.LoadedOn)
			}
		} else if len(s.LoadedOn) != 0 {
			t.Errorf("shard %v loaded on %v", s.Shard, s.LoadedOn)
		}
	}
	_ = placement.Shard{}
}

func TestRouterViews(t *testing.T) {
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	verdict := func(node, state string, since int, err string) cluster.NodeVerdict {
		return cluster.NodeVerdict{NodeID: node, State: state, Since: at(since), LastError: err}
	}
	router := func(id string, vs ...cluster.NodeVerdict) cluster.LoadRecord {
		return cluster.LoadRecord{RouterID: id, Fingerprint: "f", TokensPerSecond: []float64{0}, Unhealthy: vs}
	}
	view := func(state string, routers uint32, since int, err string) *moegridv1.RouterView {
		return &moegridv1.RouterView{State: state, Routers: routers, Since: timestamppb.New(at(since)), LastError: err}
	}
	for _, tc := range []struct {
		name  string
		loads []cluster.LoadRecord
		want  map[string]*moegridv1.RouterView
	}{
		{"no routers", nil, map[string]*moegridv1.RouterView{}},
		{"all trusted", []cluster.LoadRecord{router("r1"), router("r2")}, map[string]*moegridv1.RouterView{}},
		{"one suspect", []cluster.LoadRecord{router("r1", verdict("n1", cluster.VerdictSuspect, 5, "slow"))},
			map[string]*moegridv1.RouterView{"n1": view(cluster.VerdictSuspect, 1, 5, "slow")}},
		{"ejected wins over suspect", []cluster.LoadRecord{
			router("r1", verdict("n1", cluster.VerdictSuspect, 1, "slow")),
			router("r2", verdict("n1", cluster.VerdictEjected, 7, "refused")),
			router("r3", verdict("n1", cluster.VerdictSuspect, 2, "slow")),
		}, map[string]*moegridv1.RouterView{"n1": view(cluster.VerdictEjected, 1, 7, "refused")}},
		{"earliest of the same state", []cluster.LoadRecord{
			router("r1", verdict("n1", cluster.VerdictEjected, 9, "late"), verdict("n2", cluster.VerdictSuspect, 3, "x")),
			router("r2", verdict("n1", cluster.VerdictEjected, 4, "early")),
		}, map[string]*moegridv1.RouterView{
			"n1": view(cluster.VerdictEjected, 2, 4, "early"),
			"n2": view(cluster.VerdictSuspect, 1, 3, "x"),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, routerViews(tc.loads), protocmp.Transform()); diff != "" {
				t.Errorf("views (-want +got):\n%s", diff)
			}
		})
	}
}

func TestErrorBoundary(t *testing.T) {
	boundary := errorBoundary(testLoggerDiscard()).Unary()
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("drain: %w: n9", cluster.ErrNodeNotFound), codes.NotFound},
		{fmt.Errorf("%w: empty", cluster.ErrInvalidID), codes.InvalidArgument},
		{errors.Join(errInvalidArgument, errors.New("node_id is required")), codes.InvalidArgument},
		{errNotConnected, codes.Unavailable},
		{fmt.Errorf("cluster: read: %w", status.Error(codes.Unavailable, "connection refused")), codes.Unavailable},
		{fmt.Errorf("read: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{errors.New("disk on fire"), codes.Internal},
	} {
		_, err := boundary(t.Context(), nil, &grpcInfo, func(context.Context, any) (any, error) { return nil, tc.err })
		if status.Code(err) != tc.code {
			t.Errorf("%v → %v, want %v", tc.err, err, tc.code)
		}
		if tc.code == codes.Internal && status.Convert(err).Message() != "internal error" {
			t.Errorf("internal details leaked: %v", err)
		}
	}
	// A cancelled caller gets Canceled whatever the handler said.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := boundary(ctx, nil, &grpcInfo, func(context.Context, any) (any, error) { return nil, errors.New("x") })
	if status.Code(err) != codes.Canceled {
		t.Errorf("cancelled: %v", err)
	}
}
