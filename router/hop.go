package router

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/internal/mtls"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// The keepalive of router → node connections: a connection quiet for
// keepaliveTime is pinged, and one whose ping is not answered within
// keepaliveTimeout is closed, failing its calls, so a peer that vanished
// without a FIN costs seconds, not the call timeout. Servers refuse pings
// more often than every 10s (internal/serve), so keepaliveTime is no
// shorter.
const (
	keepaliveTime    = 10 * time.Second
	keepaliveTimeout = 5 * time.Second
)

// The reconnection backoff of router → node channels: gRPC's default grows
// to 120 s, so a node back at its address after a minute's outage would
// wait up to two more before this router dials it again.
var hopBackoff = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
	MinConnectTimeout: 20 * time.Second,
}

// hopConn is the dispatcher's connection to one expert node: a gRPC
// channel and, on it, one ForwardStream that carries every call to the
// node, many in flight. A node that does not serve ForwardStream gets unary
// Forward calls instead.
type hopConn struct {
	addr string
	cc   *grpc.ClientConn
	// node is the ID of the node last reached at addr, protected by the
	// dispatcher's mu.
	node string
	// ctx is the connection's lifetime, separate from any request's so
	// that one request ending does not end a stream the others share;
	// close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the receivers and unary calls

	mu     sync.Mutex
	stream *hopStream // protected by mu; nil before the first call and after one broke
	unary  bool       // protected by mu; the node does not serve ForwardStream
	closed bool       // protected by mu
}

// hopStream is one ForwardStream and the calls waiting for its answers.
type hopStream struct {
	// opened is closed once the stream is open, s set, or has failed to
	// open, s nil. Opening waits until the channel is connected, which to
	// a node whose port is blackholed it is not for as long as the
	// blackhole lasts, once the kernel has given up on the connection
	// (TCP_USER_TIMEOUT, which gRPC sets to keepaliveTimeout): the
	// redial's handshake goes unanswered. So a stream opens in a goroutine
	// of its own, never the dispatcher's, and calls wait for it in theirs.
	opened chan struct{}
	s      moegridv1.Expert_ForwardStreamClient
	cancel context.CancelFunc

	// sendMu serialises Send, which the stream does not allow concurrently.
	sendMu sync.Mutex

	mu      sync.Mutex
	pending map[uint64]*hopCall // protected by mu; by id
	next    uint64              // protected by mu; the last id used
	broken  bool                // protected by mu
}

// hopCall is one Forward call to one node: built by the dispatcher,
// answered on a stream or by a unary call, and reported on done exactly
// once unless it is abandoned first. After done, the dispatcher owns it
// again.
type hopCall struct {
	node    string
	req     moegridv1.ForwardRequest
	rows    []*moegridv1.ExpertRows // reused across uses of the call
	ptrs    []*moegridv1.ExpertRows
	buf     []byte
	batches []int // indexes into the layer's batches
	nrows   int

	// done receives the call when it finishes; it is buffered to hold
	// every call of a round, so finishing never blocks.
	done     chan<- *hopCall
	resp     *moegridv1.ForwardResponse
	err      error
	start    time.Time
	deadline time.Time
	timeout  time.Duration

	// sending is held while start's Send of the request runs: a call
	// failed meanwhile (its stream broke, its node was ejected) is not
	// reused until the Send has let go of its request.
	sending sync.WaitGroup

	// Set while the call is in flight, for abandon.
	conn    *hopConn
	stream  *hopStream
	id      uint64
	cancelU context.CancelFunc // unary calls

	// The dispatcher's bookkeeping of the call, owned by the round.
	owner *roundCall
	hedge bool
	probe bool
	ended bool
}

var hopCallPool = sync.Pool{New: func() any { return new(hopCall) }}

// newHopCall returns a cleared call, its buffers kept from earlier use.
func newHopCall() *hopCall {
	c := hopCallPool.Get().(*hopCall)
	*c = hopCall{rows: c.rows[:0], ptrs: c.ptrs[:0], buf: c.buf[:0], batches: c.batches[:0]}
	return c
}

// release returns a call whose answer the dispatcher has read to the pool.
// Calls abandoned in flight are never released: a receiver or unary call
// may still hold them.
func (c *hopCall) release() {
	c.sending.Wait()
	c.resp, c.err, c.owner, c.stream, c.conn, c.done = nil, nil, nil, nil, nil, nil
	hopCallPool.Put(c)
}

func (c *hopCall) finish() { c.done <- c }

func dialHop(addr string, src *mtls.Source) (*hopConn, error) {
	cc, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(mtls.DialCreds(src, addr)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: keepaliveTimeout, PermitWithoutStream: true}),
		grpc.WithConnectParams(hopBackoff),
		// The channel lives as long as the node is placed: never idle,
		// so that watch reads a lost connection as lost.
		grpc.WithIdleTimeout(0),
	)
	if err != nil {
		return nil, fmt.Errorf("router: dial %s: %w", addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &hopConn{addr: addr, cc: cc, ctx: ctx, cancel: cancel}, nil
}

// watch follows the channel's connectivity until the connection closes,
// reporting an established connection lost (up false) at once and ready
// again (up true). A channel gone idle after a loss is asked to connect,
// so that a lost node is redialled without waiting for a call; one never
// connected is left to its first call.
func (hc *hopConn) watch(report func(up bool)) {
	up, connected := false, false
	for {
		s := hc.cc.GetState()
		if s == connectivity.Shutdown {
			return
		}
		if ready := s == connectivity.Ready; ready != up {
			up = ready
			connected = connected || up
			report(up)
		}
		if s == connectivity.Idle && connected {
			hc.cc.Connect()
		}
		if !hc.cc.WaitForStateChange(hc.ctx, s) {
			return
		}
	}
}

// close ends the stream, fails its calls with UNAVAILABLE, closes the
// channel and waits for the connection's goroutines. It is idempotent.
func (hc *hopConn) close() error {
	hc.mu.Lock()
	if hc.closed {
		hc.mu.Unlock()
		return nil
	}
	hc.closed = true
	hc.mu.Unlock()
	hc.cancel()
	err := hc.cc.Close()
	hc.wg.Wait()
	return err
}

// start sends c, whose request is built, to the node. Its answer, or the
// error that ended it, arrives on c.done; a call that cannot be sent is
// finished with a retryable error.
//
// The Send runs in a goroutine of its own: it blocks while the stream has
// no HTTP/2 flow-control window, which a node that stopped reading (its
// port blackholed, its process stopped) never gives back until keepalive
// closes the connection, seconds later. The dispatcher must meanwhile be
// free to hedge the call and to give up on it at its deadline.
func (hc *hopConn) start(ctx context.Context, c *hopCall) {
	st, unary, err := hc.currentStream()
	if err != nil {
		c.err = err
		c.finish()
		return
	}
	if unary {
		hc.startUnary(ctx, c)
		return
	}
	st.mu.Lock()
	if st.broken {
		st.mu.Unlock()
		c.err = status.Errorf(codes.Unavailable, "router: stream to %s broke", hc.addr)
		c.finish()
		return
	}
	st.next++
	c.id, c.stream = st.next, st
	st.pending[c.id] = c
	st.mu.Unlock()

	f := moegridv1.ForwardStreamRequest{Id: c.id, Request: &c.req, TimeoutMicros: uint64(c.timeout / time.Microsecond)}
	c.sending.Add(1)
	sending := hc.spawn(func() {
		<-st.opened
		if st.s == nil || !st.has(f.Id) {
			// The stream failed to open, and its calls with it, or this
			// one was given up while it opened: nothing to send.
			c.sending.Done()
			return
		}
		st.sendMu.Lock()
		err := st.s.Send(&f)
		st.sendMu.Unlock()
		c.sending.Done()
		// The receiver sees the stream end too and fails what is pending;
		// only this call, if still pending, is failed here. Once Send
		// returned nil the call may be answered and reused, and once it
		// was taken by another it is theirs: it is only touched here if
		// this goroutine takes it.
		if err != nil && st.take(f.Id) {
			c.err = status.Errorf(codes.Unavailable, "router: send to %s: %v", hc.addr, err)
			c.finish()
		}
	})
	if !sending {
		c.sending.Done()
		if st.take(f.Id) {
			c.err = status.Errorf(codes.Unavailable, "router: connection to %s closed", hc.addr)
			c.finish()
		}
	}
}

// spawn runs f in a goroutine that close waits for, unless the connection
// is closed already, and reports whether f runs: once close waits on the
// WaitGroup, nothing may add to it.
func (hc *hopConn) spawn(f func()) bool {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if hc.closed {
		return false
	}
	hc.spawnLocked(f)
	return true
}

// spawnLocked is spawn for a caller that holds hc.mu and has seen the
// connection open.
func (hc *hopConn) spawnLocked(f func()) {
	hc.wg.Add(1)
	go func() {
		defer hc.wg.Done()
		f()
	}()
}

// currentStream returns the stream to send on, starting to open one if
// there is none, or reports that the node is called by unary Forward. It
// does not wait for the node.
func (hc *hopConn) currentStream() (*hopStream, bool, error) {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	switch {
	case hc.closed:
		return nil, false, status.Errorf(codes.Unavailable, "router: connection to %s closed", hc.addr)
	case hc.unary:
		return nil, true, nil
	case hc.stream != nil:
		return hc.stream, false, nil
	}
	sctx, cancel := context.WithCancel(hc.ctx)
	st := &hopStream{opened: make(chan struct{}), cancel: cancel, pending: map[uint64]*hopCall{}}
	hc.stream = st
	hc.spawnLocked(func() { hc.open(sctx, st) })
	return st, false, nil
}

// open opens st's ForwardStream and then receives on it. A stream that
// fails to open fails the calls sent on it meanwhile, retryable; so does
// one cancelled while it waits (the node was ejected, the connection
// closed).
func (hc *hopConn) open(ctx context.Context, st *hopStream) {
	s, err := moegridv1.NewExpertClient(hc.cc).ForwardStream(ctx)
	if err != nil {
		close(st.opened)
		hc.broke(st, status.Errorf(codes.Unavailable, "router: open stream to %s: %v", hc.addr, err))
		return
	}
	st.s = s
	close(st.opened)
	hc.receive(st)
}

// receive hands each answer on st to its call until the stream ends, then
// fails the calls still pending: with UNAVAILABLE, retryable, or by unary
// calls when the node turns out not to serve ForwardStream.
func (hc *hopConn) receive(st *hopStream) {
	for {
		r, err := st.s.Recv()
		if err != nil {
			hc.broke(st, err)
			return
		}
		st.mu.Lock()
		c := st.pending[r.Id]
		delete(st.pending, r.Id)
		st.mu.Unlock()
		if c == nil {
			continue // abandoned
		}
		switch {
		case r.Code != uint32(codes.OK):
			c.err = status.Error(codes.Code(r.Code), r.Message)
		case r.Response == nil:
			c.err = status.Errorf(codes.Internal, "router: node at %s answered call %d with neither a response nor an error", hc.addr, r.Id)
		default:
			c.resp = r.Response
		}
		c.finish()
	}
}

// broke retires st and settles its pending calls.
func (hc *hopConn) broke(st *hopStream, err error) {
	st.cancel()
	unimplemented := status.Code(err) == codes.Unimplemented
	hc.mu.Lock()
	if hc.stream == st {
		hc.stream = nil
	}
	if unimplemented {
		hc.unary = true
	}
	hc.mu.Unlock()
	st.mu.Lock()
	st.broken = true
	pending := st.pending
	st.pending = nil
	st.mu.Unlock()
	for _, c := range pending {
		if unimplemented {
			hc.startUnary(hc.ctx, c)
			continue
		}
		c.err = status.Errorf(codes.Unavailable, "router: stream to %s ended: %v", hc.addr, err)
		c.finish()
	}
}

// failAll fails every call in flight on the current stream with err and
// retires the stream: the dispatcher ejected the node or gossip declared
// it dead, and its callers should move on at once.
func (hc *hopConn) failAll(err error) {
	hc.mu.Lock()
	st := hc.stream
	hc.stream = nil
	hc.mu.Unlock()
	if st == nil {
		return
	}
	st.cancel() // the receiver then finds the map gone and returns
	st.mu.Lock()
	st.broken = true
	pending := st.pending
	st.pending = nil
	st.mu.Unlock()
	for _, c := range pending {
		c.err = err
		c.finish()
	}
}

// startUnary makes c as a unary Forward call in its own goroutine.
func (hc *hopConn) startUnary(ctx context.Context, c *hopCall) {
	cctx, cancel := context.WithCancel(ctx)
	if !c.deadline.IsZero() {
		cctx, cancel = context.WithDeadline(ctx, c.deadline)
	}
	c.cancelU = cancel
	if !hc.spawn(func() {
		defer cancel()
		c.resp, c.err = moegridv1.NewExpertClient(hc.cc).Forward(cctx, &c.req)
		c.finish()
	}) {
		cancel()
		c.err = status.Errorf(codes.Unavailable, "router: connection to %s closed", hc.addr)
		c.finish()
	}
}

// has reports whether call id is still pending on the stream.
func (st *hopStream) has(id uint64) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	_, ok := st.pending[id]
	return ok
}

// take removes call id from the stream's pending calls; it reports whether
// it was there, which makes the taker the one to finish or drop it.
func (st *hopStream) take(id uint64) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if _, ok := st.pending[id]; !ok {
		return false
	}
	delete(st.pending, id)
	return true
}

// abandon stops waiting for c: the node is told to drop it, and c will not
// be finished unless its answer was already on the way. The cancel is sent
// in a goroutine, as start's Send is: the stream may not be open yet, or
// have no window left for it.
func (hc *hopConn) abandon(c *hopCall) {
	st := c.stream
	if st == nil {
		if c.cancelU != nil {
			c.cancelU()
		}
		return
	}
	if !st.take(c.id) {
		// Answered already, or moved to a unary call when the stream
		// turned out unsupported; that one ends at its deadline.
		return
	}
	f := moegridv1.ForwardStreamRequest{Id: c.id, Cancel: true}
	// A closed connection has cancelled the stream, and the call with it.
	hc.spawn(func() {
		<-st.opened
		if st.s == nil {
			return // never opened, so the call was never sent
		}
		st.sendMu.Lock()
		st.s.Send(&f) // a failed Send means the stream is gone, and the call with it
		st.sendMu.Unlock()
	})
}
