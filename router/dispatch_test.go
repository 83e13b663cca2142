package router

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/model"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// expertNode is a minimal expert server on loopback over the shared
// in-process experts (package expertnode is not the router's to import).
// The topology decides what it serves. It counts its calls by layer and
// fails every call with failCode when that is set; with hang set, a call
// waits for its end (the node has gone gray). It serves ForwardStream
// unless unaryOnly is set, as a node built before the stream would.
type expertNode struct {
	moegridv1.UnimplementedExpertServer
	id, addr  string
	failCode  atomic.Uint32 // a codes.Code; OK serves
	hang      atomic.Bool
	unaryOnly atomic.Bool
	cancelled atomic.Int32 // hung calls ended by their context

	mu    sync.Mutex
	calls map[int]int // protected by mu; by layer

	stop func()
}

var _ moegridv1.ExpertServer = (*expertNode)(nil)

// startExpertNode serves an expert node on loopback, with opts (such as
// its TLS).
func startExpertNode(t *testing.T, id string, opts ...grpc.ServerOption) *expertNode {
	t.Helper()
	return startExpertNodeAt(t, id, "127.0.0.1:0", opts...)
}

// startExpertNodeAt is startExpertNode listening on addr.
func startExpertNodeAt(t *testing.T, id, addr string, opts ...grpc.ServerOption) *expertNode {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	n := &expertNode{id: id, addr: lis.Addr().String(), calls: map[int]int{}}
	srv := grpc.NewServer(opts...)
	moegridv1.RegisterExpertServer(srv, n)
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(lis)
	}()
	var once sync.Once
	n.stop = func() {
		once.Do(func() {
			srv.Stop()
			<-served
		})
	}
	t.Cleanup(n.stop)
	return n
}

func (n *expertNode) endpoint() Endpoint { return Endpoint{NodeID: n.id, Addr: n.addr} }

// callsByLayer returns the calls so far and resets the count.
func (n *expertNode) callsByLayer() map[int]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.calls
	n.calls = map[int]int{}
	return c
}

func (n *expertNode) Forward(ctx context.Context, req *moegridv1.ForwardRequest) (*moegridv1.ForwardResponse, error) {
	n.mu.Lock()
	n.calls[int(req.Layer)]++
	n.mu.Unlock()
	if c := codes.Code(n.failCode.Load()); c != codes.OK {
		return nil, status.Errorf(c, "node %s: injected failure", n.id)
	}
	if n.hang.Load() {
		<-ctx.Done()
		n.cancelled.Add(1)
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	H := fx.model.Config.HiddenSize
	if int(req.Dim) != H {
		return nil, status.Errorf(codes.InvalidArgument, "dim %d, want %d", req.Dim, H)
	}
	batches := make([]model.ExpertBatch, len(req.Batches))
	for i, b := range req.Batches {
		rows := int(b.Rows)
		in := make([]float32, rows*H)
		if err := moegridv1.DecodeActivations(in, b.Data, rows, H, req.Dtype); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		batches[i] = model.ExpertBatch{Expert: int(b.Expert), Rows: rows, In: in, Out: make([]float32, rows*H)}
	}
	if err := fx.experts.Forward(ctx, int(req.Layer), batches); err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	resp := &moegridv1.ForwardResponse{}
	for _, b := range batches {
		data, err := moegridv1.AppendActivations(nil, b.Out, req.Dtype)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		resp.Batches = append(resp.Batches, &moegridv1.ExpertRows{Expert: uint32(b.Expert), Rows: uint32(b.Rows), Data: data})
	}
	return resp, nil
}

func (n *expertNode) ForwardStream(stream moegridv1.Expert_ForwardStreamServer) error {
	if n.unaryOnly.Load() {
		return n.UnimplementedExpertServer.ForwardStream(stream)
	}
	return moegridv1.ServeForwardStream(stream, nil, n.Forward)
}

// staticTopology is a Topology the test sets by hand.
type staticTopology struct {
	mu      sync.Mutex
	holders map[[2]int][]Endpoint // protected by mu; by (expert, layer)
	changed chan struct{}         // protected by mu
}

var _ Topology = (*staticTopology)(nil)

// newTopology spreads every expert of every layer over nodes, expert e on
// node e mod len(nodes); with replicas, on the next ones too.
func newTopology(replicas int, nodes ...*expertNode) *staticTopology {
	s := &staticTopology{holders: map[[2]int][]Endpoint{}, changed: make(chan struct{})}
	cfg := &fx.model.Config
	for l := range cfg.NumHiddenLayers {
		for e := range cfg.NumLocalExperts {
			for r := range replicas {
				s.holders[[2]int{e, l}] = append(s.holders[[2]int{e, l}], nodes[(e+r)%len(nodes)].endpoint())
			}
		}
	}
	return s
}

func (s *staticTopology) Holders(expert, layer int) []Endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holders[[2]int{expert, layer}]
}

func (s *staticTopology) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// set replaces the holders of (expert, layer) and signals a change.
func (s *staticTopology) set(expert, layer int, eps ...Endpoint) {
	s.setExperts([]int{expert}, layer, eps...)
}

// setExperts replaces the holders of several experts of a layer at once.
func (s *staticTopology) setExperts(experts []int, layer int, eps ...Endpoint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range experts {
		s.holders[[2]int{e, layer}] = eps
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

func newTestDispatcher(t *testing.T, cfg DispatchConfig, topo Topology) *Dispatcher {
	t.Helper()
	if cfg.CallTimeout == 0 {
		cfg.CallTimeout = 10 * time.Second
	}
	if cfg.WaitForHolder == 0 {
		cfg.WaitForHolder = 10 * time.Second
	}
	d := NewDispatcher(cfg, topo, fx.model.Config.HiddenSize, nil, nil)
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Dispatcher.Close: %v", err)
		}
	})
	return d
}

// expertBatches returns batches of random rows for experts, rows[i] rows
// for experts[i], with zeroed outputs.
func expertBatches(seed uint64, experts []int, rows []int) []model.ExpertBatch {
	H := fx.model.Config.HiddenSize
	rng := rand.New(rand.NewPCG(seed, 1))
	var bs []model.ExpertBatch
	for i, e := range experts {
		b := model.ExpertBatch{Expert: e, Rows: rows[i], In: make([]float32, rows[i]*H), Out: make([]float32, rows[i]*H)}
		for j := range b.In {
			b.In[j] = float32(rng.NormFloat64())
		}
		bs = append(bs, b)
	}
	return bs
}

// inProcess computes batches with the shared experts into fresh outputs.
func inProcess(t *testing.T, layer int, batches []model.ExpertBatch) [][]float32 {
	t.Helper()
	local := make([]model.ExpertBatch, len(batches))
	for i, b := range batches {
		local[i] = b
		local[i].Out = make([]float32, len(b.Out))
	}
	if err := fx.experts.Forward(testContext(t), layer, local); err != nil {
		t.Fatal(err)
	}
	out := make([][]float32, len(local))
	for i, b := range local {
		out[i] = b.Out
	}
	return out
}

// sameBits reports the first element where got differs from want in its
// bits.
func sameBits(want, got [][]float32) error {
	if len(want) != len(got) {
		return fmt.Errorf("%d slices, want %d", len(got), len(want))
	}
	for i := range want {
		if len(want[i]) != len(got[i]) {
			return fmt.Errorf("slice %d: %d elements, want %d", i, len(got[i]), len(want[i]))
		}
		for j := range want[i] {
			if math.Float32bits(want[i][j]) != math.Float32bits(got[i][j]) {
				return fmt.Errorf("[%d][%d] = %v, want %v", i, j, got[i][j], want[i][j])
			}
		}
	}
	return nil
}

func outputs(batches []model.ExpertBatch) [][]float32 {
	out := make([][]float32, len(batches))
	for i, b := range batches {
		out[i] = b.Out
	}
	return out
}

// A step through the dispatcher gives the in-process logits and routes bit
// for bit, with one call per node per layer.
func TestDispatcherMatchesInProcess(t *testing.T) {
	for _, nodes := range []int{1, 3, 8} {
		t.Run(fmt.Sprintf("%d nodes", nodes), func(t *testing.T) {
			ctx := testContext(t)
			var ns []*expertNode
			for i := range nodes {
				ns = append(ns, startExpertNode(t, fmt.Sprintf("n%d", i)))
			}
			d := newTestDispatcher(t, DispatchConfig{}, newTopology(1, ns...))

			var local, remote []model.Input
			for _, p := range prompts(3) {
				local = append(local, model.Input{Cache: fx.model.NewCache(), Tokens: p})
				remote = append(remote, model.Input{Cache: fx.model.NewCache(), Tokens: p})
			}
			want, err := fx.model.Forward(ctx, fx.experts, local)
			if err != nil {
				t.Fatal(err)
			}
			got, err := fx.model.Forward(ctx, d, remote)
			if err != nil {
				t.Fatal(err)
			}
			if err := sameBits(want.Logits, got.Logits); err != nil {
				t.Errorf("logits differ from in-process: %v", err)
			}
			if diff := cmp.Diff(want.Routes, got.Routes); diff != "" {
				t.Errorf("routes differ from in-process (-want +got):\n%s", diff)
			}

			// Each node is called once for each layer in which it holds
			// an expert some row chose, and never otherwise.
			for i, n := range ns {
				wantCalls := map[int]int{}
				for l, routes := range want.Routes {
					for _, rt := range routes {
						for _, e := range rt.Experts {
							if e%nodes == i {
								wantCalls[l] = 1
							}
						}
					}
				}
				if diff := cmp.Diff(wantCalls, n.callsByLayer()); diff != "" {
					t.Errorf("node %s: calls by layer (-want +got):\n%s", n.id, diff)
				}
			}
		})
	}
}

// A call that fails with a retryable error goes to another replica, and
// the result is still exact.
func TestDispatcherRetriesOnReplica(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(n *expertNode)
	}{
		{"unavailable", func(n *expertNode) { n.failCode.Store(uint32(codes.Unavailable)) }},
		{"failed precondition", func(n *expertNode) { n.failCode.Store(uint32(codes.FailedPrecondition)) }},
		{"stopped", func(n *expertNode) { n.stop() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := startExpertNode(t, "a"), startExpertNode(t, "b")
			topo := newTopology(1, a)
			for e := range fx.model.Config.NumLocalExperts {
				topo.set(e, 1, a.endpoint(), b.endpoint())
			}
			d := newTestDispatcher(t, DispatchConfig{}, topo)
			tc.break_(a)
			batches := expertBatches(1, []int{0, 3, 5}, []int{2, 1, 4})
			if err := d.Forward(testContext(t), 1, batches); err != nil {
				t.Fatal(err)
			}
			if err := sameBits(inProcess(t, 1, batches), outputs(batches)); err != nil {
				t.Errorf("outputs differ from in-process: %v", err)
			}
			// The broken node is tried once; the replica serves its own
			// share and then the broken node's, one call per round.
			wantA := map[int]int{1: 1}
			if tc.name == "stopped" {
				wantA = map[int]int{}
			}
			if diff := cmp.Diff(wantA, a.callsByLayer()); diff != "" {
				t.Errorf("calls to the broken node (-want +got):\n%s", diff)
			}
			if got := b.callsByLayer(); len(got) != 1 || got[1] < 1 || got[1] > 2 {
				t.Errorf("calls to the replica by layer: %v, want 1 or 2 for layer 1", got)
			}
		})
	}
}

func TestDispatcherNoHolder(t *testing.T) {
	const wait = 150 * time.Millisecond
	t.Run("none placed", func(t *testing.T) {
		a := startExpertNode(t, "a")
		topo := newTopology(1, a)
		topo.set(5, 0)
		topo.set(2, 0)
		d := newTestDispatcher(t, DispatchConfig{WaitForHolder: wait}, topo)
		start := time.Now()
		err := d.Forward(testContext(t), 0, expertBatches(1, []int{1, 2, 5}, []int{1, 1, 1}))
		if !errors.Is(err, ErrNoLiveReplica) || !strings.Contains(err.Error(), "experts [2 5] of layer 0") {
			t.Fatalf("got %v, want ErrNoLiveReplica naming experts [2 5] of layer 0", err)
		}
		if elapsed := time.Since(start); elapsed < wait {
			t.Errorf("failed after %v, before the wait of %v", elapsed, wait)
		}
		if code := status.Code(toStatus(fmt.Errorf("layer 0 experts: %w", err))); code != codes.Unavailable {
			t.Errorf("status code %v, want Unavailable", code)
		}
		if diff := cmp.Diff(map[int]int{}, a.callsByLayer()); diff != "" {
			t.Errorf("no call is made while an expert lacks a holder (-want +got):\n%s", diff)
		}
	})

	t.Run("only holder fails", func(t *testing.T) {
		a := startExpertNode(t, "a")
		a.failCode.Store(uint32(codes.Unavailable))
		d := newTestDispatcher(t, DispatchConfig{WaitForHolder: wait}, newTopology(1, a))
		err := d.Forward(testContext(t), 0, expertBatches(1, []int{4}, []int{1}))
		if !errors.Is(err, ErrNoLiveReplica) || !strings.Contains(err.Error(), "experts [4]") || !strings.Contains(err.Error(), "node a failed") {
			t.Fatalf("got %v, want ErrNoLiveReplica naming expert 4 and node a", err)
		}
	})

	t.Run("context ends the wait", func(t *testing.T) {
		topo := newTopology(1, startExpertNode(t, "a"))
		topo.set(5, 0)
		d := newTestDispatcher(t, DispatchConfig{WaitForHolder: time.Minute}, topo)
		ctx, cancel := context.WithTimeout(testContext(t), 50*time.Millisecond)
		defer cancel()
		if err := d.Forward(ctx, 0, expertBatches(1, []int{5}, []int{1})); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want the context's error", err)
		}
	})
}

// A new placement during the wait for a holder is used at once.
func TestDispatcherWaitsForPlacement(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(topo *staticTopology, a *expertNode)
	}{
		{"no holder", func(topo *staticTopology, a *expertNode) { topo.set(5, 0) }},
		{"only holder fails", func(topo *staticTopology, a *expertNode) { a.failCode.Store(uint32(codes.Unavailable)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := startExpertNode(t, "a"), startExpertNode(t, "b")
			topo := newTopology(1, a)
			tc.setup(topo, a)
			const wait = 20 * time.Second
			d := newTestDispatcher(t, DispatchConfig{WaitForHolder: wait}, topo)
			batches := expertBatches(2, []int{1, 5}, []int{3, 2})
			var wg sync.WaitGroup
			defer wg.Wait()
			wg.Go(func() {
				time.Sleep(50 * time.Millisecond)
				topo.setExperts([]int{1, 5}, 0, b.endpoint())
			})
			start := time.Now()
			if err := d.Forward(testContext(t), 0, batches); err != nil {
				t.Fatal(err)
			}
			if elapsed := time.Since(start); elapsed > wait/2 {
				t.Errorf("took %v", elapsed)
			}
			if err := sameBits(inProcess(t, 0, batches), outputs(batches)); err != nil {
				t.Errorf("outputs differ from in-process: %v", err)
			}
			if diff := cmp.Diff(map[int]int{0: 1}, b.callsByLayer()); diff != "" {
				t.Errorf("calls to the new holder (-want +got):\n%s", diff)
			}
			if got := a.callsByLayer(); tc.name == "only holder fails" && got[0] != 1 {
				t.Errorf("the failed holder was called %d times before the change, want once", got[0])
			}
		})
	}
}

// A node that judges the request malformed is not retried elsewhere, and
// the client does not see INVALID_ARGUMENT: the fault is the router's.
func TestDispatcherInvalidArgument(t *testing.T) {
	a, b := startExpertNode(t, "a"), startExpertNode(t, "b")
	a.failCode.Store(uint32(codes.InvalidArgument))
	topo := newTopology(1, a)
	for e := range fx.model.Config.NumLocalExperts {
		for l := range fx.model.Config.NumHiddenLayers {
			topo.set(e, l, a.endpoint(), b.endpoint())
		}
	}
	d := newTestDispatcher(t, DispatchConfig{}, topo)
	err := d.Forward(testContext(t), 0, expertBatches(1, []int{6}, []int{2}))
	if err == nil {
		t.Fatal("Forward succeeded")
	}
	if errors.Is(err, ErrNoLiveReplica) || !strings.Contains(err.Error(), "node a") {
		t.Errorf("error %v, want one naming node a", err)
	}
	if code := status.Code(toStatus(err)); code != codes.Internal {
		t.Errorf("status code %v, want Internal", code)
	}
	if diff := cmp.Diff(map[int]int{0: 1}, a.callsByLayer()); diff != "" {
		t.Errorf("calls to node a (-want +got):\n%s", diff)
	}
	if got := b.callsByLayer(); len(got) != 0 {
		t.Errorf("the replica was called: %v", got)
	}

	// Through the whole router: INTERNAL, not INVALID_ARGUMENT.
	tr := newTestRouter(t, routerOptions{experts: d})
	_, err = generate(testContext(t), tr.client, &moegridv1.GenerateRequest{Prompt: &moegridv1.GenerateRequest_Text{Text: "a"}, MaxTokens: 2})
	if code := status.Code(err); code != codes.Internal {
		t.Errorf("Generate: %v, want INTERNAL", err)
	}
}

// BF16 on the wire halves the traffic and stays within BF16's precision of
// the F32 result.
func TestDispatcherBF16(t *testing.T) {
	a := startExpertNode(t, "a")
	d := newTestDispatcher(t, DispatchConfig{DType: moegridv1.DType_DTYPE_BF16}, newTopology(1, a))
	batches := expertBatches(3, []int{0, 2, 7}, []int{4, 1, 3})
	if err := d.Forward(testContext(t), 1, batches); err != nil {
		t.Fatal(err)
	}
	want := inProcess(t, 1, batches)
	for i, b := range batches {
		scale := 0.0
		for _, v := range want[i] {
			scale = max(scale, math.Abs(float64(v)))
		}
		if slices.Equal(b.Out, want[i]) {
			t.Errorf("expert %d: BF16 output equals F32 exactly; was BF16 used?", b.Expert)
		}
		for j, v := range b.Out {
			if diff := math.Abs(float64(v - want[i][j])); diff > 1e-2*scale {
				t.Fatalf("expert %d element %d: %v, want %v within %v", b.Expert, j, v, want[i][j], 1e-2*scale)
			}
		}
	}
}

// TestDispatcherRetain checks that connections to nodes no longer registered
// are closed and forgotten, and that live ones are kept.
func TestDispatcherRetain(t *testing.T) {
	d := NewDispatcher(DispatchConfig{WaitForHolder: time.Second}, nil, 4, nil, nil)
	defer d.Close()
	for _, addr := range []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"} {
		if _, err := d.conn(Endpoint{NodeID: addr, Addr: addr}); err != nil {
			t.Fatal(err)
		}
	}
	d.Retain(map[string]bool{"127.0.0.1:2": true})
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.conns) != 1 || d.conns["127.0.0.1:2"] == nil {
		t.Errorf("connections after Retain: %v, want only 127.0.0.1:2", d.conns)
	}
}

// TestRetryableCodes: only a node's INVALID_ARGUMENT stops a retry; a
// CANCELLED call whose request context is alive means the connection closed
// under it and goes to another replica.
func TestRetryableCodes(t *testing.T) {
	for code, want := range map[codes.Code]bool{
		codes.InvalidArgument:    false,
		codes.Canceled:           true,
		codes.Unavailable:        true,
		codes.FailedPrecondition: true,
		codes.ResourceExhausted:  true,
		codes.DeadlineExceeded:   true,
		codes.Internal:           true,
	} {
		if got := retryable(status.Error(code, "x")); got != want {
			t.Errorf("retryable(%v) = %v, want %v", code, got, want)
		}
	}
}
