package expertnode

import (
	"context"
	"net"
	"os"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/internal/grpcerr"
	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/synth"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// tinyDir is a synthetic tiny checkpoint shared by the package's tests.
var tinyDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "expertnode-test-")
	if err != nil {
		panic(err)
	}
	p, _ := synth.PresetByName("tiny")
	if err := synth.Write(dir, synth.Options{Preset: p, Seed: 1, DType: safetensors.F32, Shards: 2}); err != nil {
		panic(err)
	}
	tinyDir = dir
	// The kernel's worker pool lives as long as the process, by design.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/moegrid/moegrid/model/kernel.worker"), goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

// startService serves an expert service holding the given experts (all
// layers) on a real gRPC server on loopback.
func startService(t *testing.T, experts []int, queue int) (moegridv1.ExpertClient, *expertService, model.Config) {
	t.Helper()
	cfg, err := model.LoadConfig(tinyDir)
	if err != nil {
		t.Fatal(err)
	}
	set, err := model.LoadExperts(tinyDir, cfg, func(_, e int) bool { return slices.Contains(experts, e) })
	if err != nil {
		t.Fatal(err)
	}
	store := &shardStore{}
	store.swap(set)
	t.Cleanup(func() { store.swap(nil) })
	boundary := grpcerr.New(errorCodes, nil)
	svc := newExpertService("node-a", cfg, store, queue, 1, newMetrics(nil), boundary)
	srv := grpc.NewServer(grpc.UnaryInterceptor(boundary.Unary()), grpc.StreamInterceptor(boundary.Stream()))
	moegridv1.RegisterExpertServer(srv, svc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return moegridv1.NewExpertClient(conn), svc, cfg
}

func rows(t *testing.T, n, dim int, dtype moegridv1.DType) []byte {
	t.Helper()
	x := make([]float32, n*dim)
	for i := range x {
		x[i] = float32(i%17)/17 - 0.5
	}
	b, err := moegridv1.AppendActivations(nil, x, dtype)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestForwardMatchesInProcess checks that the served result is the
// in-process expert's, bit for bit, in F32.
func TestForwardMatchesInProcess(t *testing.T) {
	client, _, cfg := startService(t, []int{2, 5}, 8)
	H := cfg.HiddenSize
	req := &moegridv1.ForwardRequest{Layer: 1, Dim: uint32(H), Dtype: moegridv1.DType_DTYPE_F32, Batches: []*moegridv1.ExpertRows{
		{Expert: 5, Rows: 3, Data: rows(t, 3, H, moegridv1.DType_DTYPE_F32)},
		{Expert: 2, Rows: 1, Data: rows(t, 1, H, moegridv1.DType_DTYPE_F32)},
	}}
	resp, err := client.Forward(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	all, err := model.LoadExperts(tinyDir, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer all.Close()
	for i, b := range req.Batches {
		in := make([]float32, int(b.Rows)*H)
		if err := moegridv1.DecodeActivations(in, b.Data, int(b.Rows), H, req.Dtype); err != nil {
			t.Fatal(err)
		}
		want := []model.ExpertBatch{{Expert: int(b.Expert), Rows: int(b.Rows), In: in, Out: make([]float32, len(in))}}
		if err := all.Forward(context.Background(), 1, want); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, len(in))
		if err := moegridv1.DecodeActivations(got, resp.Batches[i].Data, int(b.Rows), H, req.Dtype); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want[0].Out) {
			t.Errorf("batch %d (expert %d): served output differs from the in-process expert", i, b.Expert)
		}
	}
}

// TestForwardErrors checks each kind of bad request gets its code and a
// message naming the problem.
func TestForwardErrors(t *testing.T) {
	client, svc, cfg := startService(t, []int{2}, 8)
	H := uint32(cfg.HiddenSize)
	f32 := moegridv1.DType_DTYPE_F32
	good := func(expert uint32, n int) *moegridv1.ExpertRows {
		return &moegridv1.ExpertRows{Expert: expert, Rows: uint32(n), Data: rows(t, n, int(H), f32)}
	}
	for _, tc := range []struct {
		name string
		req  *moegridv1.ForwardRequest
		code codes.Code
		msg  string
	}{
		{"unspecified dtype", &moegridv1.ForwardRequest{Layer: 0, Dim: H, Batches: []*moegridv1.ExpertRows{good(2, 1)}}, codes.InvalidArgument, "dtype"},
		{"wrong dim", &moegridv1.ForwardRequest{Layer: 0, Dim: H + 1, Dtype: f32, Batches: []*moegridv1.ExpertRows{good(2, 1)}}, codes.InvalidArgument, "dim"},
		{"layer out of range", &moegridv1.ForwardRequest{Layer: 9, Dim: H, Dtype: f32, Batches: []*moegridv1.ExpertRows{good(2, 1)}}, codes.InvalidArgument, "layer 9"},
		{"no batches", &moegridv1.ForwardRequest{Layer: 0, Dim: H, Dtype: f32}, codes.InvalidArgument, "no batches"},
		{"expert out of range", &moegridv1.ForwardRequest{Layer: 0, Dim: H, Dtype: f32, Batches: []*moegridv1.ExpertRows{good(8, 1)}}, codes.InvalidArgument, "expert 8"},
		{"duplicate expert", &moegridv1.ForwardRequest{Layer: 0, Dim: H, Dtype: f32, Batches: []*moegridv1.ExpertRows{good(2, 1), good(2, 1)}}, codes.InvalidArgument, "twice"},
		{"zero rows", &moegridv1.ForwardRequest{Layer: 0, Dim: H, Dtype: f32, Batches: []*moegridv1.ExpertRows{{Expert: 2}}}, codes.InvalidArgument, "no rows"},
		{"truncated payload", &moegridv1.ForwardRequest{Layer: 0, Dim: H, Dtype: f32, Batches: []*moegridv1.ExpertRows{{Expert: 2, Rows: 2, Data: rows(t, 1, int(H), f32)}}}, codes.InvalidArgument, "bytes of data"},
		{"bf16 payload declared f32", &moegridv1.ForwardRequest{Layer: 0, Dim: H, Dtype: f32, Batches: []*moegridv1.ExpertRows{{Expert: 2, Rows: 1, Data: rows(t, 1, int(H), moegridv1.DType_DTYPE_BF16)}}}, codes.InvalidArgument, "bytes of data"},
		{"too many rows", &moegridv1.ForwardRequest{Layer: 0, Dim: H, Dtype: f32, Batches: []*moegridv1.ExpertRows{{Expert: 2, Rows: MaxRowsPerCall + 1}}}, codes.InvalidArgument, "rows in one call"},
		{"shard not held", &moegridv1.ForwardRequest{Layer: 1, Dim: H, Dtype: f32, Batches: []*moegridv1.ExpertRows{good(3, 1)}}, codes.FailedPrecondition, "expert 3 for layer 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := client.Forward(t.Context(), tc.req)
			st := status.Convert(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Errorf("got %v %q, want %v containing %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
		})
	}

	t.Run("queue full", func(t *testing.T) {
		for range cap(svc.queue) {
			svc.queue <- struct{}{}
		}
		defer func() {
			for range cap(svc.queue) {
				<-svc.queue
			}
		}()
		_, err := client.Forward(t.Context(), &moegridv1.ForwardRequest{Layer: 0, Dim: H, Dtype: f32, Batches: []*moegridv1.ExpertRows{good(2, 1)}})
		if status.Code(err) != codes.ResourceExhausted {
			t.Errorf("got %v, want ResourceExhausted", err)
		}
	})
	t.Run("draining", func(t *testing.T) {
		svc.draining.Store(true)
		defer svc.draining.Store(false)
		_, err := client.Forward(t.Context(), &moegridv1.ForwardRequest{Layer: 0, Dim: H, Dtype: f32, Batches: []*moegridv1.ExpertRows{good(2, 1)}})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("got %v, want Unavailable", err)
		}
	})
}

// TestSwapKeepsCallsInFlight checks that swapping the shards waits for the
// calls pinned to the old set.
func TestSwapKeepsCallsInFlight(t *testing.T) {
	cfg, err := model.LoadConfig(tinyDir)
	if err != nil {
		t.Fatal(err)
	}
	load := func(e int) *model.ExpertSet {
		s, err := model.LoadExperts(tinyDir, cfg, func(_, x int) bool { return x == e })
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	var st shardStore
	st.swap(load(0))
	old, release := st.acquire()
	swapped := make(chan struct{})
	go func() {
		st.swap(load(1))
		close(swapped)
	}()
	// The pinned set still computes while the swap waits.
	H := cfg.HiddenSize
	b := []model.ExpertBatch{{Expert: 0, Rows: 1, In: make([]float32, H), Out: make([]float32, H)}}
	if err := old.Forward(t.Context(), 0, b); err != nil {
		t.Fatal(err)
	}
	select {
	case <-swapped:
		t.Fatal("swap finished while a call held the old set")
	default:
	}
	release()
	<-swapped
	cur, release := st.acquire()
	if !cur.Has(0, 1) || cur.Has(0, 0) {
		t.Error("the new set is not the current one")
	}
	release()
	st.swap(nil)
}

// TestForwardStream checks that calls on one stream get the unary call's
// answers, matched by id, errors included, and that draining ends the
// stream with UNAVAILABLE.
func TestForwardStream(t *testing.T) {
	client, svc, cfg := startService(t, []int{2, 5}, 8)
	H := uint32(cfg.HiddenSize)
	f32 := moegridv1.DType_DTYPE_F32
	good := &moegridv1.ForwardRequest{Layer: 1, Dim: H, Dtype: f32, Batches: []*moegridv1.ExpertRows{{Expert: 5, Rows: 2, Data: rows(t, 2, int(H), f32)}}}
	notHeld := &moegridv1.ForwardRequest{Layer: 1, Dim: H, Dtype: f32, Batches: []*moegridv1.ExpertRows{{Expert: 3, Rows: 1, Data: rows(t, 1, int(H), f32)}}}
	want, err := client.Forward(t.Context(), good)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := client.ForwardStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for id, req := range map[uint64]*moegridv1.ForwardRequest{1: good, 2: notHeld, 3: good} {
		if err := stream.Send(&moegridv1.ForwardStreamRequest{Id: id, Request: req, TimeoutMicros: 10e6}); err != nil {
			t.Fatal(err)
		}
	}
	if err := stream.Send(&moegridv1.ForwardStreamRequest{Id: 4}); err != nil {
		t.Fatal(err)
	}
	codesByID := map[uint64]codes.Code{}
	for range 4 {
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		codesByID[r.Id] = codes.Code(r.Code)
		if r.Code == 0 && !slices.Equal(r.Response.Batches[0].Data, want.Batches[0].Data) {
			t.Errorf("call %d: the stream's answer differs from the unary call's", r.Id)
		}
	}
	wantCodes := map[uint64]codes.Code{1: codes.OK, 2: codes.FailedPrecondition, 3: codes.OK, 4: codes.InvalidArgument}
	for id, c := range wantCodes {
		if codesByID[id] != c {
			t.Errorf("call %d: code %v, want %v", id, codesByID[id], c)
		}
	}
	svc.drain()
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("after drain: %v, want UNAVAILABLE", err)
	}
}
