package router

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/model"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// ErrNoLiveReplica is returned when an expert the step needs has no live,
// loaded holder and none appeared within the wait bound.
var ErrNoLiveReplica = errors.New("router: no live replica")

// Endpoint is an expert node that can be called.
type Endpoint struct {
	NodeID string
	Addr   string
}

// Topology tells the dispatcher which nodes may serve an expert. The
// implementation over etcd and gossip is in topology.go.
type Topology interface {
	// Holders returns the nodes that may serve expert for layer now: in the
	// current placement, reporting the shard loaded, and alive. The result
	// must not be modified.
	Holders(expert, layer int) []Endpoint
	// Changed returns a channel that is closed at the next change.
	Changed() <-chan struct{}
}

// MaxMessageBytes bounds a Forward request or response: enough for a
// prefill chunk of 2048 rows of Mixtral-8x7B activations in F32 per expert
// pair.
const MaxMessageBytes = 256 << 20

// DispatchConfig tunes the remote expert calls.
type DispatchConfig struct {
	// DType is the activation dtype on the wire.
	DType moegridv1.DType
	// CallTimeout bounds one Forward call (one hop).
	CallTimeout time.Duration
	// WaitForHolder bounds how long a step waits for an expert with no live
	// holder to get one before it fails with ErrNoLiveReplica.
	WaitForHolder time.Duration
}

// Dispatcher implements model.Experts by calling expert nodes over gRPC. It
// is safe for concurrent use.
type Dispatcher struct {
	cfg    DispatchConfig
	topo   Topology
	hidden int

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn // protected by mu; by address
	// inflight counts rows sent to each node and not yet answered, protected
	// by mu; the dispatcher spreads rows over replicas by it.
	inflight map[string]int
}

var _ model.Experts = (*Dispatcher)(nil)

// NewDispatcher returns a dispatcher for a model of the given hidden size.
func NewDispatcher(cfg DispatchConfig, topo Topology, hidden int) *Dispatcher {
	if cfg.DType == moegridv1.DType_DTYPE_UNSPECIFIED {
		cfg.DType = moegridv1.DType_DTYPE_F32
	}
	return &Dispatcher{
		cfg:      cfg,
		topo:     topo,
		hidden:   hidden,
		conns:    map[string]*grpc.ClientConn{},
		inflight: map[string]int{},
	}
}

// Close closes every connection.
func (d *Dispatcher) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for addr, c := range d.conns {
		errs = append(errs, c.Close())
		delete(d.conns, addr)
	}
	return errors.Join(errs...)
}

// Retain closes the connections to every address not in live: nodes that
// left the placement or changed address. Their gRPC channels would otherwise
// keep reconnecting to dead addresses for the life of the router.
func (d *Dispatcher) Retain(live map[string]bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for addr, c := range d.conns {
		if !live[addr] {
			c.Close()
			delete(d.conns, addr)
		}
	}
}

func (d *Dispatcher) conn(addr string) (*grpc.ClientConn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c, ok := d.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes)),
	)
	if err != nil {
		return nil, fmt.Errorf("router: dial %s: %w", addr, err)
	}
	d.conns[addr] = c
	return c, nil
}

// call is the part of a layer's work sent to one node.
type call struct {
	ep      Endpoint
	batches []int // indexes into the layer's batches
	rows    int
}

// Forward sends every batch to a node holding its expert, one call per node,
// concurrently. Batches whose call fails with a retryable error are sent to
// another holder; an expert with none waits for the topology to change, up to
// WaitForHolder.
func (d *Dispatcher) Forward(ctx context.Context, layer int, batches []model.ExpertBatch) error {
	pending := make([]int, len(batches))
	for i := range pending {
		pending[i] = i
	}
	failed := map[string]error{} // nodes that failed this layer's calls
	var deadline <-chan time.Time
	for len(pending) > 0 {
		changed := d.topo.Changed()
		calls, orphans := d.assign(layer, batches, pending, failed)
		if len(orphans) > 0 {
			if deadline == nil {
				timer := time.NewTimer(d.cfg.WaitForHolder)
				defer timer.Stop()
				deadline = timer.C
			}
			select {
			case <-changed:
				// A new placement or node state: every node gets another
				// chance.
				clear(failed)
				continue
			case <-deadline:
				return d.noHolderError(layer, batches, orphans, failed)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		var (
			wg      sync.WaitGroup
			retry   []int
			fatal   error
			callErr = make([]error, len(calls))
		)
		for i, c := range calls {
			wg.Go(func() { callErr[i] = d.send(ctx, layer, batches, c) })
		}
		wg.Wait()
		for i, err := range callErr {
			if err == nil {
				continue
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !retryable(err) {
				// Not wrapped: the node judged our request malformed, which is
				// the router's fault, not the client's, and must not reach the
				// client as its status code.
				fatal = errors.Join(fatal, fmt.Errorf("node %s: %v", calls[i].ep.NodeID, err))
				continue
			}
			failed[calls[i].ep.NodeID] = err
			retry = append(retry, calls[i].batches...)
		}
		if fatal != nil {
			return fatal
		}
		pending = retry
	}
	return nil
}

// assign picks a holder for every pending batch, avoiding failed nodes and
// spreading rows over replicas by the rows already in flight to each. The
// batches with no usable holder are returned as orphans.
func (d *Dispatcher) assign(layer int, batches []model.ExpertBatch, pending []int, failed map[string]error) ([]call, []int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	byNode := map[string]*call{}
	var order []string
	var orphans []int
	for _, bi := range pending {
		b := batches[bi]
		var best *Endpoint
		bestLoad := 0
		for _, ep := range d.topo.Holders(b.Expert, layer) {
			if _, bad := failed[ep.NodeID]; bad {
				continue
			}
			load := d.inflight[ep.NodeID]
			if c := byNode[ep.NodeID]; c != nil {
				load += c.rows
			}
			if best == nil || load < bestLoad {
				best, bestLoad = &ep, load
			}
		}
		if best == nil {
			orphans = append(orphans, bi)
			continue
		}
		c := byNode[best.NodeID]
		if c == nil {
			c = &call{ep: *best}
			byNode[best.NodeID] = c
			order = append(order, best.NodeID)
		}
		c.batches = append(c.batches, bi)
		c.rows += b.Rows
	}
	if len(orphans) > 0 {
		return nil, orphans
	}
	calls := make([]call, 0, len(order))
	for _, id := range order {
		c := byNode[id]
		d.inflight[id] += c.rows
		calls = append(calls, *c)
	}
	return calls, nil
}

func (d *Dispatcher) noHolderError(layer int, batches []model.ExpertBatch, orphans []int, failed map[string]error) error {
	var experts []int
	for _, bi := range orphans {
		experts = append(experts, batches[bi].Expert)
	}
	slices.Sort(experts)
	err := fmt.Errorf("%w: experts %v of layer %d have no live, loaded holder after %v", ErrNoLiveReplica, experts, layer, d.cfg.WaitForHolder)
	for id, ferr := range failed {
		err = fmt.Errorf("%w; node %s failed: %v", err, id, ferr)
	}
	return err
}

// send makes one Forward call and decodes its outputs into the batches.
func (d *Dispatcher) send(ctx context.Context, layer int, batches []model.ExpertBatch, c call) error {
	defer func() {
		d.mu.Lock()
		d.inflight[c.ep.NodeID] -= c.rows
		d.mu.Unlock()
	}()
	conn, err := d.conn(c.ep.Addr)
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	req := &moegridv1.ForwardRequest{Layer: uint32(layer), Dim: uint32(d.hidden), Dtype: d.cfg.DType}
	for _, bi := range c.batches {
		b := batches[bi]
		data, err := moegridv1.AppendActivations(make([]byte, 0, len(b.In)*moegridv1.ElementSize(d.cfg.DType)), b.In, d.cfg.DType)
		if err != nil {
			return err
		}
		req.Batches = append(req.Batches, &moegridv1.ExpertRows{Expert: uint32(b.Expert), Rows: uint32(b.Rows), Data: data})
	}
	cctx := ctx
	if d.cfg.CallTimeout > 0 {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(ctx, d.cfg.CallTimeout)
		defer cancel()
	}
	resp, err := moegridv1.NewExpertClient(conn).Forward(cctx, req)
	if err != nil {
		return err
	}
	if len(resp.Batches) != len(c.batches) {
		return status.Errorf(codes.Internal, "node %s answered %d batches for %d", c.ep.NodeID, len(resp.Batches), len(c.batches))
	}
	for i, bi := range c.batches {
		b := batches[bi]
		out := resp.Batches[i]
		if int(out.Expert) != b.Expert || int(out.Rows) != b.Rows {
			return status.Errorf(codes.Internal, "node %s answered expert %d with %d rows for expert %d with %d rows", c.ep.NodeID, out.Expert, out.Rows, b.Expert, b.Rows)
		}
		if err := moegridv1.DecodeActivations(b.Out, out.Data, b.Rows, d.hidden, d.cfg.DType); err != nil {
			return status.Errorf(codes.Internal, "node %s: %v", c.ep.NodeID, err)
		}
	}
	return nil
}

// retryable reports whether a failed call may succeed on another replica.
// Forward has no side effects, so repeating it elsewhere is always safe; only
// requests the node judged malformed are not retried. CANCELLED is retried:
// Forward has already returned for a cancelled request context, so here it
// means the connection went away under the call (Retain closing the channel
// of a node that just left).
func retryable(err error) bool {
	return status.Code(err) != codes.InvalidArgument
}
