package moegridv1

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ForwardFunc computes one Forward call, as a unary Forward handler does:
// a failure is a gRPC status error.
type ForwardFunc func(ctx context.Context, req *ForwardRequest) (*ForwardResponse, error)

// ErrStreamDraining ends a ForwardStream whose server is shutting down.
var ErrStreamDraining = status.Error(codes.Unavailable, "moegrid.v1: the node is draining; the stream ends")

// ServeForwardStream serves the calls of one ForwardStream with forward,
// each in its own goroutine, so that a slow call does not hold up the
// others. It returns when the caller closes its side of the stream or goes
// away, or when stop is closed; in every case it first waits for the calls
// in flight and sends their answers. After stop it returns
// ErrStreamDraining, so the caller moves on to another stream.
//
// A frame whose id is already in flight ends the stream with
// INVALID_ARGUMENT: the caller's bookkeeping is broken and no answer would
// be attributable. A frame with neither request nor cancel is answered
// with INVALID_ARGUMENT.
func ServeForwardStream(stream Expert_ForwardStreamServer, stop <-chan struct{}, forward ForwardFunc) error {
	ss := &streamServer{stream: stream, forward: forward, calls: map[uint64]context.CancelFunc{}}
	ctx := stream.Context()
	recvDone := make(chan error, 1)
	// The receiver is bound to the stream: once this handler returns, the
	// stream's context ends, Recv fails and the goroutine returns.
	go func() { recvDone <- ss.receive(ctx) }()
	var err error
	select {
	case err = <-recvDone:
	case <-stop:
		err = ErrStreamDraining
	}
	ss.mu.Lock()
	ss.closing = true
	ss.mu.Unlock()
	ss.wg.Wait()
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// streamServer is the state of one served ForwardStream.
type streamServer struct {
	stream  Expert_ForwardStreamServer
	forward ForwardFunc

	// sendMu serialises Send, which the stream does not allow concurrently.
	sendMu sync.Mutex

	mu sync.Mutex
	// calls holds the cancel function of each call in flight by id,
	// protected by mu; a cancelled call is removed and gets no answer.
	calls map[uint64]context.CancelFunc
	// closing refuses new calls once the handler is waiting for the last
	// ones, protected by mu.
	closing bool
	// wg counts the calls and sends the handler waits for; Add only under
	// mu while not closing.
	wg sync.WaitGroup
}

// receive reads frames until the stream ends and starts their calls.
func (ss *streamServer) receive(ctx context.Context) error {
	for {
		f, err := ss.stream.Recv()
		if err != nil {
			return err
		}
		switch {
		case f.Cancel:
			ss.mu.Lock()
			cancel := ss.calls[f.Id]
			delete(ss.calls, f.Id)
			ss.mu.Unlock()
			if cancel != nil {
				cancel()
			}
		case f.Request == nil:
			if ss.enter() {
				ss.send(&ForwardStreamResponse{Id: f.Id, Code: uint32(codes.InvalidArgument), Message: "moegrid.v1: stream frame has neither a request nor cancel"})
				ss.wg.Done()
			}
		default:
			if err := ss.start(ctx, f); err != nil {
				return err
			}
		}
	}
}

// start runs one call in its own goroutine.
func (ss *streamServer) start(ctx context.Context, f *ForwardStreamRequest) error {
	var cctx context.Context
	var cancel context.CancelFunc
	if f.TimeoutMicros > 0 {
		cctx, cancel = context.WithTimeout(ctx, time.Duration(f.TimeoutMicros)*time.Microsecond)
	} else {
		cctx, cancel = context.WithCancel(ctx)
	}
	ss.mu.Lock()
	if _, dup := ss.calls[f.Id]; dup {
		ss.mu.Unlock()
		cancel()
		return status.Errorf(codes.InvalidArgument, "moegrid.v1: stream call id %d is already in flight", f.Id)
	}
	if ss.closing {
		// The stream's end, UNAVAILABLE, answers this call too.
		ss.mu.Unlock()
		cancel()
		return nil
	}
	ss.calls[f.Id] = cancel
	ss.wg.Add(1)
	ss.mu.Unlock()
	go func() {
		defer ss.wg.Done()
		resp, err := ss.forward(cctx, f.Request)
		ss.mu.Lock()
		_, live := ss.calls[f.Id]
		delete(ss.calls, f.Id)
		ss.mu.Unlock()
		cancel()
		if !live {
			return // cancelled by the caller, who no longer waits
		}
		out := &ForwardStreamResponse{Id: f.Id, Response: resp}
		if err != nil {
			st := status.Convert(err)
			out = &ForwardStreamResponse{Id: f.Id, Code: uint32(st.Code()), Message: st.Message()}
		}
		ss.send(out)
	}()
	return nil
}

// enter reserves a place among the sends the handler waits for before it
// returns, since a stream must not be used after its handler returned; it
// reports false once the handler is closing.
func (ss *streamServer) enter() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closing {
		return false
	}
	ss.wg.Add(1)
	return true
}

// send sends one answer. A failed Send means the stream is gone, which the
// receiver sees too; the caller then fails the calls it waits for.
func (ss *streamServer) send(r *ForwardStreamResponse) {
	ss.sendMu.Lock()
	defer ss.sendMu.Unlock()
	ss.stream.Send(r)
}
