package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/internal/mtls"
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

// DispatchConfig tunes the remote expert calls. The zero value of each
// field but WaitForHolder means its default.
type DispatchConfig struct {
	// DType is the activation dtype on the wire; default F32.
	DType moegridv1.DType
	// CallTimeout bounds one Forward call (one hop): the ceiling of the
	// deadlines derived from latency, and the deadline of a call to a sole
	// holder. 0 leaves calls bounded by the request alone.
	CallTimeout time.Duration
	// WaitForHolder bounds how long a step waits for an expert with no live
	// holder to get one before it fails with ErrNoLiveReplica.
	WaitForHolder time.Duration

	// DeadlineMultiple × the 99th percentile of a node's recent calls of
	// the same size, at least DeadlineMin, is a call's deadline while
	// another holder could take it: a node gone gray costs a retry, not the
	// call timeout. Defaults 10 and 1s; a negative multiple keeps
	// CallTimeout for every call.
	DeadlineMultiple float64
	DeadlineMin      time.Duration
	// HedgeMultiple × the 95th percentile of a node's recent calls of the
	// same size, between HedgeMin and HedgeMax (HedgeMax before the node
	// has a history), is how long a call may run before the same rows go to
	// other holders too; the first complete answer wins and the other is
	// cancelled. Defaults 3, 10ms and 1s; a negative multiple disables
	// hedging.
	HedgeMultiple      float64
	HedgeMin, HedgeMax time.Duration
	// EjectAfter consecutive failures or timeouts (a lost hedge counts)
	// eject a node: its calls in flight are failed over, and it is skipped
	// where another holder exists for EjectBackoff, doubling after each
	// failed probe up to EjectMaxBackoff; then one call probes it, and
	// success restores it. Defaults 3, 1s and 30s; a negative EjectAfter
	// disables ejection.
	EjectAfter                    int
	EjectBackoff, EjectMaxBackoff time.Duration
	// TLS is the router's certificate, shown to expert nodes, and the CA
	// their certificates must chain to; the node's certificate must name
	// the host of its address. Nil dials in plaintext.
	TLS *mtls.Source
	// Reachable, if set, is told when the connection to the node at addr
	// is lost (up false: a killed node's at once, one that vanished without
	// a FIN once keepalive gives up) and when it is ready again. It must
	// not block.
	Reachable func(addr string, up bool)
}

// DefaultDispatchConfig returns the defaults, every field filled in.
func DefaultDispatchConfig() DispatchConfig {
	c := DispatchConfig{CallTimeout: 30 * time.Second, WaitForHolder: 30 * time.Second}
	c.setDefaults()
	return c
}

func (c *DispatchConfig) setDefaults() {
	if c.DType == moegridv1.DType_DTYPE_UNSPECIFIED {
		c.DType = moegridv1.DType_DTYPE_F32
	}
	setDuration := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	if c.DeadlineMultiple == 0 {
		c.DeadlineMultiple = 10
	}
	setDuration(&c.DeadlineMin, time.Second)
	if c.HedgeMultiple == 0 {
		c.HedgeMultiple = 3
	}
	setDuration(&c.HedgeMin, 10*time.Millisecond)
	setDuration(&c.HedgeMax, time.Second)
	if c.EjectAfter == 0 {
		c.EjectAfter = 3
	}
	setDuration(&c.EjectBackoff, time.Second)
	setDuration(&c.EjectMaxBackoff, 30*time.Second)
}

// Dispatcher implements model.Experts by calling expert nodes over gRPC:
// one ForwardStream per node carries every call to it. It is safe for
// concurrent use.
type Dispatcher struct {
	cfg     DispatchConfig
	topo    Topology
	hidden  int
	log     *slog.Logger
	metrics *dispatchMetrics

	mu     sync.Mutex
	conns  map[string]*hopConn // protected by mu; by address
	closed bool                // protected by mu; Close has been called
	// inflight counts rows sent to each node and not yet answered, protected
	// by mu; the dispatcher spreads rows over replicas by it.
	inflight map[string]int
	// health is each node's latency and ejection record, protected by mu.
	health map[string]*nodeHealth
	// closing counts the connections Retain is closing in the background,
	// added to under mu while not closed; Close waits for them.
	closing sync.WaitGroup
}

var _ model.Experts = (*Dispatcher)(nil)

// NewDispatcher returns a dispatcher for a model of the given hidden size.
// It logs retries, hedges and ejections to log and counts them in reg;
// both may be nil.
func NewDispatcher(cfg DispatchConfig, topo Topology, hidden int, log *slog.Logger, reg prometheus.Registerer) *Dispatcher {
	cfg.setDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Dispatcher{
		cfg:      cfg,
		topo:     topo,
		hidden:   hidden,
		log:      log,
		metrics:  newDispatchMetrics(reg),
		conns:    map[string]*hopConn{},
		inflight: map[string]int{},
		health:   map[string]*nodeHealth{},
	}
}

// Close closes every connection, failing the calls in flight, and waits
// for those Retain is still closing. The connections close concurrently:
// gRPC's Close waits up to 5 s for a GOAWAY to a node whose writes are
// stuck, and one after another that would be 5 s for each such node.
func (d *Dispatcher) Close() error {
	d.mu.Lock()
	conns := d.conns
	d.conns = map[string]*hopConn{}
	d.closed = true
	d.mu.Unlock()
	errs := make([]error, 0, len(conns))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			err := c.close()
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		})
	}
	wg.Wait()
	d.closing.Wait()
	return errors.Join(errs...)
}

// Retain closes the connections to every address not in live: nodes that
// left the placement or changed address. Their gRPC channels would otherwise
// keep reconnecting to dead addresses for the life of the router.
//
// It does not wait for them to close: its caller is the topology's watch
// loop, and gRPC's Close waits up to 5 s to write its GOAWAY on a
// connection whose writes are stuck (a node whose port is blackholed, the
// send buffer full), which would hold up every placement, death and leader
// change meanwhile. The address is forgotten at once, so a node coming
// back there is dialled afresh.
func (d *Dispatcher) Retain(live map[string]bool) {
	d.mu.Lock()
	var gone []*hopConn
	for addr, c := range d.conns {
		if !live[addr] {
			gone = append(gone, c)
			delete(d.conns, addr)
		}
	}
	if d.closed {
		// Dialled after Close, which waits for nothing more: closed here.
		d.mu.Unlock()
		for _, c := range gone {
			c.close()
		}
		return
	}
	d.closing.Add(len(gone))
	d.mu.Unlock()
	for _, c := range gone {
		go func() {
			defer d.closing.Done()
			c.close()
		}()
	}
}

// conn returns the connection to ep, dialling it on first use.
func (d *Dispatcher) conn(ep Endpoint) (*hopConn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.conns[ep.Addr]
	if !ok {
		var err error
		if c, err = dialHop(ep.Addr, d.cfg.TLS); err != nil {
			return nil, err
		}
		c.spawn(func() { c.watch(d.connectivity(c)) })
		d.conns[ep.Addr] = c
	}
	c.node = ep.NodeID
	return c, nil
}

// connectivity returns what a connection's watch reports to: a log line
// when its connection is lost and when it is back, and cfg.Reachable.
func (d *Dispatcher) connectivity(c *hopConn) func(up bool) {
	lost := false // owned by the watch goroutine
	return func(up bool) {
		d.mu.Lock()
		node := c.node
		d.mu.Unlock()
		switch {
		case !up:
			lost = true
			d.log.Warn("connection to expert node lost", "node", node, "addr", c.addr)
		case lost:
			d.log.Info("connection to expert node ready again", "node", node, "addr", c.addr)
		}
		if d.cfg.Reachable != nil {
			d.cfg.Reachable(c.addr, up)
		}
	}
}

// roundCall is the part of a layer's work sent to one node in one round:
// a primary call, and, once that runs past its hedge delay, hedge calls
// to other holders that together cover its batches.
type roundCall struct {
	ep      Endpoint
	batches []int // indexes into the layer's batches
	rows    int
	// alternative: every batch had another usable holder when assigned.
	alternative bool
	probe       bool

	primary  *hopCall
	hedgeAt  time.Time // zero: not to be hedged
	hedges   []*hopCall
	hedgesOK int
	// primaryErr is why the primary failed while hedges still ran.
	primaryErr error
	resolved   bool
}

// Forward sends every batch to a node holding its expert, one call per node,
// concurrently. Batches whose call fails with a retryable error are sent to
// another holder; an expert with none waits for the topology to change, up to
// WaitForHolder, while a re-placement can give it one (a Topology that can
// tell says so) and fails at once otherwise. A call running past its
// expected time is hedged on other holders; one past its deadline, to a node
// gossip declares dead or one the dispatcher ejects, is abandoned and retried
// elsewhere.
func (d *Dispatcher) Forward(ctx context.Context, layer int, batches []model.ExpertBatch) error {
	pending := make([]int, len(batches))
	for i := range pending {
		pending[i] = i
	}
	failed := map[string]error{} // nodes that failed this layer's calls
	var deadline <-chan time.Time
	for len(pending) > 0 {
		changed := d.topo.Changed()
		calls, orphans := d.assign(layer, batches, pending, failed, "")
		if len(orphans) > 0 {
			// Wait only while a re-placement can give them a holder.
			if err := unreplaceable(d.topo, layer, batches, orphans); err != nil {
				return err
			}
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
		retry, err := d.round(ctx, layer, batches, calls, failed, changed)
		if err != nil {
			return err
		}
		pending = retry
	}
	return nil
}

// round makes the calls of one round and waits for them, hedging,
// abandoning and failing them as they run. It returns the batches to retry
// and records the nodes that failed in failed.
func (d *Dispatcher) round(ctx context.Context, layer int, batches []model.ExpertBatch, calls []*roundCall, failed map[string]error, changed <-chan struct{}) ([]int, error) {
	// Room for every primary and a hedge of every batch: finishing a call
	// never blocks, even after the round has stopped reading.
	done := make(chan *hopCall, len(calls)+len(batches))
	for _, rc := range calls {
		rc.primary = d.launch(ctx, layer, batches, rc.ep, rc.batches, rc.rows, rc.alternative, rc.probe, rc, done)
		if rc.alternative {
			d.mu.Lock()
			delay := d.hedgeDelayLocked(rc.ep.NodeID, rc.rows)
			d.mu.Unlock()
			if delay > 0 {
				rc.hedgeAt = rc.primary.start.Add(delay)
			}
		}
	}
	var delivered []*hopCall
	defer func() {
		for _, rc := range calls {
			d.abandon(rc.primary, false)
			for _, h := range rc.hedges {
				d.abandon(h, false)
			}
		}
		// Calls that came back on done are no longer touched by anyone
		// else; abandoned ones still out are left to the collector.
		for _, c := range delivered {
			c.release()
		}
	}()

	var retry []int
	var fatal error
	open := len(calls)
	// fail settles a call none of whose attempts can answer any more.
	fail := func(rc *roundCall, node string, err error) {
		rc.resolved = true
		open--
		if !retryable(err) {
			// Not wrapped: the node judged our request malformed, which is
			// the router's fault, not the client's, and must not reach the
			// client as its status code.
			fatal = errors.Join(fatal, fmt.Errorf("node %s: %v", node, err))
			return
		}
		failed[node] = err
		retry = append(retry, rc.batches...)
		d.metrics.retries.WithLabelValues(node).Inc()
		d.log.Info("expert call failed; retrying on another holder", "node", node, "layer", layer, "err", err)
	}
	// primaryFailed handles the end of a primary that did not answer.
	primaryFailed := func(rc *roundCall, err error) {
		if len(rc.hedges) > rc.hedgesOK && rc.primaryErr == nil {
			rc.primaryErr = err
			return
		}
		fail(rc, rc.ep.NodeID, err)
	}
	hedgeFailed := func(rc *roundCall, h *hopCall, err error) {
		for _, o := range rc.hedges {
			d.abandon(o, false)
		}
		rc.hedges, rc.hedgesOK = nil, 0
		if rc.primaryErr != nil {
			failed[rc.ep.NodeID] = rc.primaryErr
			fail(rc, h.node, err)
		}
	}

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for open > 0 {
		if next, ok := nextEvent(calls); ok {
			timer.Reset(time.Until(next))
		}
		select {
		case c := <-done:
			delivered = append(delivered, c)
			if c.ended || c.owner.resolved {
				continue
			}
			rc := c.owner
			err := c.err
			if err == nil {
				err = d.decode(batches, c)
			}
			d.end(c, err)
			switch {
			case c == rc.primary && err == nil:
				rc.resolved = true
				open--
				for _, h := range rc.hedges {
					d.abandon(h, false)
				}
			case c == rc.primary:
				primaryFailed(rc, err)
			case err == nil:
				rc.hedgesOK++
				if rc.hedgesOK == len(rc.hedges) {
					rc.resolved = true
					open--
					// The hedges answered first: the primary is slow, which
					// counts toward its ejection.
					d.abandon(rc.primary, true)
				}
			default:
				hedgeFailed(rc, c, err)
			}
		case <-timer.C:
			now := time.Now()
			for _, rc := range calls {
				if rc.resolved {
					continue
				}
				if p := rc.primary; !p.ended && !p.deadline.IsZero() && !now.Before(p.deadline) {
					d.abandon(p, true)
					primaryFailed(rc, status.Errorf(codes.DeadlineExceeded, "router: node %s did not answer within %v", rc.ep.NodeID, p.timeout))
					continue
				}
				for _, h := range rc.hedges {
					if !h.ended && !h.deadline.IsZero() && !now.Before(h.deadline) {
						d.abandon(h, true)
						hedgeFailed(rc, h, status.Errorf(codes.DeadlineExceeded, "router: node %s did not answer within %v", h.node, h.timeout))
						break
					}
				}
				if !rc.hedgeAt.IsZero() && !now.Before(rc.hedgeAt) && !rc.primary.ended {
					rc.hedgeAt = time.Time{}
					d.hedge(ctx, layer, batches, rc, failed, done)
				}
			}
		case <-changed:
			changed = d.topo.Changed()
			for _, rc := range calls {
				if rc.resolved {
					continue
				}
				if p := rc.primary; !p.ended && !d.holdsAll(p.node, layer, batches, rc.batches) {
					d.abandon(p, false)
					primaryFailed(rc, status.Errorf(codes.Unavailable, "router: node %s is no longer a live holder", p.node))
					continue
				}
				for _, h := range rc.hedges {
					if !h.ended && !d.holdsAll(h.node, layer, batches, h.batches) {
						d.abandon(h, false)
						hedgeFailed(rc, h, status.Errorf(codes.Unavailable, "router: node %s is no longer a live holder", h.node))
						break
					}
				}
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if fatal != nil {
		return nil, fatal
	}
	return retry, nil
}

// nextEvent is the earliest deadline or hedge time of the calls still
// running.
func nextEvent(calls []*roundCall) (time.Time, bool) {
	var next time.Time
	consider := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	for _, rc := range calls {
		if rc.resolved {
			continue
		}
		if !rc.primary.ended {
			consider(rc.primary.deadline)
			consider(rc.hedgeAt)
		}
		for _, h := range rc.hedges {
			if !h.ended {
				consider(h.deadline)
			}
		}
	}
	return next, !next.IsZero()
}

// hedge sends the batches of rc to other holders too, if every batch has
// one.
func (d *Dispatcher) hedge(ctx context.Context, layer int, batches []model.ExpertBatch, rc *roundCall, failed map[string]error, done chan<- *hopCall) {
	hedges, orphans := d.assign(layer, batches, rc.batches, failed, rc.ep.NodeID)
	if len(orphans) > 0 {
		return
	}
	d.metrics.hedges.WithLabelValues(rc.ep.NodeID).Inc()
	d.log.Info("expert call running past its expected time; hedging on another holder",
		"node", rc.ep.NodeID, "layer", layer, "after", time.Since(rc.primary.start), "hedges", len(hedges))
	for _, h := range hedges {
		c := d.launch(ctx, layer, batches, h.ep, h.batches, h.rows, true, h.probe, rc, done)
		c.hedge = true
		rc.hedges = append(rc.hedges, c)
	}
}

// holdsAll reports whether the topology still lists node as a holder of
// every batch's expert.
func (d *Dispatcher) holdsAll(node string, layer int, batches []model.ExpertBatch, idx []int) bool {
	for _, bi := range idx {
		if !slices.ContainsFunc(d.topo.Holders(batches[bi].Expert, layer), func(ep Endpoint) bool { return ep.NodeID == node }) {
			return false
		}
	}
	return true
}

// launch builds and sends one call; its end arrives on done.
func (d *Dispatcher) launch(ctx context.Context, layer int, batches []model.ExpertBatch, ep Endpoint, idx []int, rows int, alternative, probe bool, owner *roundCall, done chan<- *hopCall) *hopCall {
	c := newHopCall()
	c.node, c.owner, c.done, c.probe, c.nrows = ep.NodeID, owner, done, probe, rows
	c.batches = append(c.batches, idx...)
	d.mu.Lock()
	c.timeout = d.timeoutLocked(ep.NodeID, rows, alternative)
	d.mu.Unlock()
	c.start = time.Now()
	if c.timeout > 0 {
		c.deadline = c.start.Add(c.timeout)
	}
	if dl, ok := ctx.Deadline(); ok && (c.deadline.IsZero() || dl.Before(c.deadline)) {
		// The node need not work past the request's end; the dispatcher
		// itself stops waiting at ctx.Done.
		c.timeout = max(time.Until(dl), time.Microsecond)
	}
	if err := d.build(layer, batches, c); err != nil {
		c.err = status.Error(codes.Internal, err.Error())
		c.finish()
		return c
	}
	hc, err := d.conn(ep)
	if err != nil {
		c.err = status.Error(codes.Unavailable, err.Error())
		c.finish()
		return c
	}
	c.conn = hc
	hc.start(ctx, c)
	return c
}

// build encodes the call's batches into its request, reusing its buffers.
func (d *Dispatcher) build(layer int, batches []model.ExpertBatch, c *hopCall) error {
	size := moegridv1.ElementSize(d.cfg.DType)
	total := 0
	for _, bi := range c.batches {
		total += len(batches[bi].In) * size
	}
	c.buf = slices.Grow(c.buf[:0], total)
	c.ptrs = c.ptrs[:0]
	for i, bi := range c.batches {
		b := batches[bi]
		from := len(c.buf)
		var err error
		if c.buf, err = moegridv1.AppendActivations(c.buf, b.In, d.cfg.DType); err != nil {
			return err
		}
		if i == len(c.rows) {
			c.rows = append(c.rows, &moegridv1.ExpertRows{})
		}
		r := c.rows[i]
		r.Expert, r.Rows, r.Data = uint32(b.Expert), uint32(b.Rows), c.buf[from:len(c.buf):len(c.buf)]
		c.ptrs = append(c.ptrs, r)
	}
	c.req.Layer, c.req.Dim, c.req.Dtype, c.req.Batches = uint32(layer), uint32(d.hidden), d.cfg.DType, c.ptrs
	return nil
}

// decode checks the answer of c against its batches and decodes the
// outputs into them.
func (d *Dispatcher) decode(batches []model.ExpertBatch, c *hopCall) error {
	resp := c.resp
	if len(resp.Batches) != len(c.batches) {
		return status.Errorf(codes.Internal, "node %s answered %d batches for %d", c.node, len(resp.Batches), len(c.batches))
	}
	for i, bi := range c.batches {
		b := batches[bi]
		out := resp.Batches[i]
		if int(out.Expert) != b.Expert || int(out.Rows) != b.Rows {
			return status.Errorf(codes.Internal, "node %s answered expert %d with %d rows for expert %d with %d rows", c.node, out.Expert, out.Rows, b.Expert, b.Rows)
		}
		if err := moegridv1.DecodeActivations(b.Out, out.Data, b.Rows, d.hidden, d.cfg.DType); err != nil {
			return status.Errorf(codes.Internal, "node %s: %v", c.node, err)
		}
	}
	return nil
}

// end records the end of a call that answered, well or not.
func (d *Dispatcher) end(c *hopCall, err error) {
	c.ended = true
	var eject bool
	d.mu.Lock()
	d.inflight[c.node] -= c.nrows
	if err == nil {
		d.succeededLocked(c.node, c.nrows, time.Since(c.start))
	} else if retryable(err) {
		eject = d.failedLocked(c.node, time.Now(), err)
	} else {
		d.endedLocked(c.node, c.probe)
	}
	d.mu.Unlock()
	if eject {
		d.failNode(c.node)
	}
}

// abandon stops waiting for a call still running; slow says the node was
// too slow (a timeout, a lost hedge), which counts toward its ejection.
func (d *Dispatcher) abandon(c *hopCall, slow bool) {
	if c == nil || c.ended {
		return
	}
	c.ended = true
	if c.conn != nil {
		c.conn.abandon(c)
	}
	var eject bool
	d.mu.Lock()
	d.inflight[c.node] -= c.nrows
	if slow {
		eject = d.failedLocked(c.node, time.Now(), status.Errorf(codes.DeadlineExceeded, "node %s too slow", c.node))
	} else {
		d.endedLocked(c.node, c.probe)
	}
	d.mu.Unlock()
	if eject {
		d.failNode(c.node)
	}
}

// failNode fails every call in flight to an ejected node, so that the
// requests waiting on them move to other holders now.
func (d *Dispatcher) failNode(node string) {
	d.mu.Lock()
	var conns []*hopConn
	for _, hc := range d.conns {
		if hc.node == node {
			conns = append(conns, hc)
		}
	}
	d.mu.Unlock()
	for _, hc := range conns {
		hc.failAll(status.Errorf(codes.Unavailable, "router: node %s ejected after repeated failures", node))
	}
}

// assign picks a holder for every pending batch, avoiding failed nodes, the
// excluded one and, where another holder exists, ejected ones, and
// spreading rows over replicas by the rows already in flight to each. The
// batches with no usable holder are returned as orphans.
func (d *Dispatcher) assign(layer int, batches []model.ExpertBatch, pending []int, failed map[string]error, exclude string) ([]*roundCall, []int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	byNode := map[string]*roundCall{}
	var order []string
	var orphans []int
	for _, bi := range pending {
		b := batches[bi]
		var best, fallback *Endpoint
		var bestProbe bool
		bestLoad, fallbackLoad, usable := 0, 0, 0
		for _, ep := range d.topo.Holders(b.Expert, layer) {
			if _, bad := failed[ep.NodeID]; bad || ep.NodeID == exclude {
				continue
			}
			usable++
			load := d.inflight[ep.NodeID]
			if c := byNode[ep.NodeID]; c != nil {
				load += c.rows
			}
			ok, probe := d.availableLocked(ep.NodeID, now)
			if !ok {
				// Ejected: the last resort, never a reason to compute a
				// token without its expert.
				if fallback == nil || load < fallbackLoad {
					fallback, fallbackLoad = &ep, load
				}
				continue
			}
			if best == nil || load < bestLoad {
				best, bestLoad, bestProbe = &ep, load, probe
			}
		}
		if best == nil {
			best = fallback
		}
		if best == nil {
			orphans = append(orphans, bi)
			continue
		}
		c := byNode[best.NodeID]
		if c == nil {
			c = &roundCall{ep: *best, alternative: true, probe: bestProbe}
			byNode[best.NodeID] = c
			order = append(order, best.NodeID)
		}
		c.alternative = c.alternative && usable > 1
		c.batches = append(c.batches, bi)
		c.rows += b.Rows
	}
	if len(orphans) > 0 {
		return nil, orphans
	}
	calls := make([]*roundCall, 0, len(order))
	for _, id := range order {
		c := byNode[id]
		d.inflight[id] += c.rows
		if c.probe {
			d.healthLocked(id).probing = true
		}
		calls = append(calls, c)
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

// retryable reports whether a failed call may succeed on another replica.
// Forward has no side effects, so repeating it elsewhere is always safe; only
// requests the node judged malformed are not retried. CANCELLED is retried:
// Forward has already returned for a cancelled request context, so here it
// means the connection went away under the call (Retain closing the channel
// of a node that just left).
func retryable(err error) bool {
	return status.Code(err) != codes.InvalidArgument
}
