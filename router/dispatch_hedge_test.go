package router

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/moegrid/moegrid/cluster"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// nodeCount reads one node's series of a counter vector.
func nodeCount(v *prometheus.CounterVec, label string) float64 {
	var m dto.Metric
	if err := v.WithLabelValues(label).Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// replicated returns a topology in which a and b, in that order, hold
// every expert of every layer: a is picked first while loads are equal.
func replicated(a, b *expertNode) *staticTopology {
	topo := newTopology(1, a)
	for l := range fx.model.Config.NumHiddenLayers {
		for e := range fx.model.Config.NumLocalExperts {
			topo.set(e, l, a.endpoint(), b.endpoint())
		}
	}
	return topo
}

// forwardExact runs one layer through d and checks the result against the
// in-process experts bit for bit; it returns how long the call took.
func forwardExact(t *testing.T, d *Dispatcher, layer int) time.Duration {
	t.Helper()
	batches := expertBatches(uint64(layer)+7, []int{1, 6}, []int{2, 1})
	start := time.Now()
	if err := d.Forward(testContext(t), layer, batches); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if err := sameBits(inProcess(t, layer, batches), outputs(batches)); err != nil {
		t.Fatalf("outputs differ from in-process: %v", err)
	}
	return took
}

// A node whose Forward hangs, with a replica present, costs one hedge
// delay, not the call timeout, and its call is cancelled on the node.
func TestDispatcherHedgesHungNode(t *testing.T) {
	a, b := startExpertNode(t, "a"), startExpertNode(t, "b")
	const hedgeMax = 200 * time.Millisecond
	d := newTestDispatcher(t, DispatchConfig{CallTimeout: 30 * time.Second, HedgeMax: hedgeMax, EjectAfter: -1}, replicated(a, b))
	a.hang.Store(true)
	took := forwardExact(t, d, 0)
	if took < hedgeMax || took > 10*hedgeMax {
		t.Errorf("a hop with a hung primary took %v, want about the hedge delay %v", took, hedgeMax)
	}
	if got := nodeCount(d.metrics.hedges, "a"); got != 1 {
		t.Errorf("hedges from node a: %v, want 1", got)
	}
	if diff := cmp.Diff(map[int]int{0: 1}, a.callsByLayer()); diff != "" {
		t.Errorf("calls to the hung node (-want +got):\n%s", diff)
	}
	// The replica serves its own share of the rows and the hedge.
	if diff := cmp.Diff(map[int]int{0: 2}, b.callsByLayer()); diff != "" {
		t.Errorf("calls to the replica (-want +got):\n%s", diff)
	}
	eventually(t, "the hung call cancelled on the node", func() error {
		if n := a.cancelled.Load(); n != 1 {
			return errors.New("not yet")
		}
		return nil
	})
}

// Once a node has a latency history, a hop that runs far past it is
// abandoned and retried on a replica well before the call timeout.
func TestDispatcherHopDeadlineFromLatency(t *testing.T) {
	a, b := startExpertNode(t, "a"), startExpertNode(t, "b")
	const deadlineMin = 150 * time.Millisecond
	d := newTestDispatcher(t, DispatchConfig{CallTimeout: 30 * time.Second, HedgeMultiple: -1, DeadlineMin: deadlineMin, EjectAfter: -1}, replicated(a, b))
	b.failCode.Store(uint32(codes.Unavailable)) // every warm-up call goes to a
	for range 2 * minLatencySamples {
		forwardExact(t, d, 1)
	}
	b.failCode.Store(0)
	a.hang.Store(true)
	took := forwardExact(t, d, 1)
	if took < deadlineMin || took > 20*deadlineMin {
		t.Errorf("a hop with a hung node took %v, want about its derived deadline %v", took, deadlineMin)
	}
	if got := nodeCount(d.metrics.retries, "a"); got != 1 {
		t.Errorf("retries from node a: %v, want 1", got)
	}
}

// A call in flight to a node the topology drops (gossip declared it dead)
// is abandoned at once and retried on the remaining holder.
func TestDispatcherAbandonsDeadNode(t *testing.T) {
	a, b := startExpertNode(t, "a"), startExpertNode(t, "b")
	topo := replicated(a, b)
	d := newTestDispatcher(t, DispatchConfig{CallTimeout: 30 * time.Second, HedgeMultiple: -1}, topo)
	a.hang.Store(true)
	go func() {
		time.Sleep(100 * time.Millisecond)
		topo.setExperts([]int{1, 6}, 0, b.endpoint())
	}()
	if took := forwardExact(t, d, 0); took > 5*time.Second {
		t.Errorf("took %v after the node was declared dead", took)
	}
	eventually(t, "the call to the dead node cancelled", func() error {
		if n := a.cancelled.Load(); n != 1 {
			return errors.New("not yet")
		}
		return nil
	})
}

// After EjectAfter consecutive failures a node is skipped on later layers
// and steps; after the backoff one call probes it, and its success brings
// the node back. Ejected, it still serves an expert it alone holds.
func TestDispatcherEjectsAndProbes(t *testing.T) {
	a, b := startExpertNode(t, "a"), startExpertNode(t, "b")
	topo := replicated(a, b)
	const backoff = 300 * time.Millisecond
	reg := prometheus.NewRegistry()
	cfg := DispatchConfig{HedgeMultiple: -1, EjectAfter: 2, EjectBackoff: backoff, WaitForHolder: 10 * time.Second, CallTimeout: 10 * time.Second}
	d := NewDispatcher(cfg, topo, fx.model.Config.HiddenSize, nil, reg)
	t.Cleanup(func() { d.Close() })

	a.failCode.Store(uint32(codes.Unavailable))
	forwardExact(t, d, 0)
	wantVerdict(t, d, cluster.VerdictSuspect)
	forwardExact(t, d, 1)
	if diff := cmp.Diff(map[int]int{0: 1, 1: 1}, a.callsByLayer()); diff != "" {
		t.Errorf("calls to the failing node before ejection (-want +got):\n%s", diff)
	}
	if got := nodeCount(d.metrics.ejections, "a"); got != 1 {
		t.Fatalf("ejections of node a: %v, want 1", got)
	}
	wantVerdict(t, d, cluster.VerdictEjected)
	a.failCode.Store(0)
	ejectedAt := time.Now()
	forwardExact(t, d, 0)
	forwardExact(t, d, 1)
	if got := a.callsByLayer(); len(got) != 0 && time.Since(ejectedAt) < backoff {
		t.Errorf("the ejected node was called: %v", got)
	}

	t.Run("sole holder", func(t *testing.T) {
		topo.setExperts([]int{1, 6}, 1, a.endpoint())
		defer topo.setExperts([]int{1, 6}, 1, a.endpoint(), b.endpoint())
		forwardExact(t, d, 1)
		if diff := cmp.Diff(map[int]int{1: 1}, a.callsByLayer()); diff != "" {
			t.Errorf("calls to the ejected sole holder (-want +got):\n%s", diff)
		}
	})
	// The sole-holder call succeeded, which restores the node too; eject it
	// again to watch the probe.
	a.failCode.Store(uint32(codes.Unavailable))
	forwardExact(t, d, 0)
	forwardExact(t, d, 0)
	if got := nodeCount(d.metrics.ejections, "a"); got != 2 {
		t.Fatalf("ejections of node a: %v, want 2", got)
	}
	a.failCode.Store(0)
	a.callsByLayer()
	time.Sleep(backoff + 50*time.Millisecond)
	forwardExact(t, d, 0) // the probe
	forwardExact(t, d, 1) // restored: a is first again
	if diff := cmp.Diff(map[int]int{0: 1, 1: 1}, a.callsByLayer()); diff != "" {
		t.Errorf("calls to the node after its backoff (-want +got):\n%s", diff)
	}
	if got := nodeCount(d.metrics.retries, "a"); got != 4 {
		t.Errorf("retries from node a: %v, want 4", got)
	}
	if v := d.Unhealthy(time.Now()); len(v) != 0 {
		t.Errorf("verdicts after the probe succeeded: %+v, want none", v)
	}
}

// wantVerdict checks that node a, failing with Unavailable, is the one node
// the dispatcher reports, in state.
func wantVerdict(t *testing.T, d *Dispatcher, state string) {
	t.Helper()
	v := d.Unhealthy(time.Now())
	if len(v) != 1 || v[0].NodeID != "a" || v[0].State != state || v[0].Since.IsZero() ||
		!strings.Contains(v[0].LastError, "Unavailable") {
		t.Fatalf("verdicts %+v, want node a %s with its Unavailable error", v, state)
	}
}

// A node that does not serve ForwardStream gets unary calls, with the same
// results.
func TestDispatcherUnaryNode(t *testing.T) {
	a := startExpertNode(t, "a")
	a.unaryOnly.Store(true)
	d := newTestDispatcher(t, DispatchConfig{}, newTopology(1, a))
	for l := range fx.model.Config.NumHiddenLayers {
		forwardExact(t, d, l)
	}
	if diff := cmp.Diff(map[int]int{0: 1, 1: 1}, a.callsByLayer()); diff != "" {
		t.Errorf("calls by layer (-want +got):\n%s", diff)
	}
}

// Cancelling the request ends the hop at once and the node's call with it.
func TestDispatcherCancelled(t *testing.T) {
	a := startExpertNode(t, "a")
	a.hang.Store(true)
	d := newTestDispatcher(t, DispatchConfig{DType: moegridv1.DType_DTYPE_F32}, newTopology(1, a))
	ctx, cancel := context.WithTimeout(testContext(t), 100*time.Millisecond)
	defer cancel()
	err := d.Forward(ctx, 0, expertBatches(1, []int{3}, []int{1}))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want the context's error", err)
	}
	eventually(t, "the node's call cancelled", func() error {
		if n := a.cancelled.Load(); n != 1 {
			return errors.New("not yet")
		}
		return nil
	})
}

// stalledNode is an expert node whose ForwardStream never reads: a node
// whose port is blackholed looks so to the router, whose HTTP/2 window
// runs out and is never given back.
type stalledNode struct {
	moegridv1.UnimplementedExpertServer
}

func (stalledNode) ForwardStream(stream moegridv1.Expert_ForwardStreamServer) error {
	<-stream.Context().Done()
	return stream.Context().Err()
}

// A call bigger than the stream's flow-control window to a node that has
// stopped reading blocks in Send; the dispatcher hedges it to the replica
// after the hedge delay all the same, instead of waiting until keepalive
// (or the call timeout) ends the connection.
func TestDispatcherHedgesPastBlockedSend(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	moegridv1.RegisterExpertServer(srv, stalledNode{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	stalled := Endpoint{NodeID: "a", Addr: lis.Addr().String()}
	b := startExpertNode(t, "b")
	topo := newTopology(1, b)
	for l := range fx.model.Config.NumHiddenLayers {
		for e := range fx.model.Config.NumLocalExperts {
			topo.set(e, l, stalled, b.endpoint())
		}
	}
	const hedgeMax = 200 * time.Millisecond
	d := newTestDispatcher(t, DispatchConfig{CallTimeout: 30 * time.Second, HedgeMax: hedgeMax, EjectAfter: -1}, topo)
	// One batch, all to the stalled primary: a thousand rows of
	// hidden-size float32s, past the 64 KiB window.
	batches := expertBatches(3, []int{1}, []int{1000})
	start := time.Now()
	if err := d.Forward(testContext(t), 0, batches); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 10*hedgeMax {
		t.Errorf("a hop whose send to the primary blocked took %v, want about the hedge delay %v", took, hedgeMax)
	}
	if err := sameBits(inProcess(t, 0, batches), outputs(batches)); err != nil {
		t.Fatalf("outputs differ from in-process: %v", err)
	}
}
