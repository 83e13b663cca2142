package expertnode

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/moegrid/moegrid/internal/grpcerr"
	"github.com/moegrid/moegrid/model"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// Domain errors of the Forward service; errorCodes maps them to gRPC codes.
var (
	errInvalid  = errors.New("expertnode: invalid request")
	errNotHeld  = errors.New("expertnode: shard not held")
	errBusy     = errors.New("expertnode: queue full")
	errDraining = errors.New("expertnode: draining")
)

// MaxRowsPerCall bounds the rows of one Forward call, all experts together:
// it caps the memory one call can make the node allocate.
const MaxRowsPerCall = 1 << 16

// expertService implements moegridv1.ExpertServer over a shardStore.
type expertService struct {
	moegridv1.UnimplementedExpertServer

	nodeID  string
	cfg     model.Config
	store   *shardStore
	metrics *metrics
	// errs turns the calls' errors into statuses on ForwardStream, where
	// each call is answered inside the stream and so passes no interceptor.
	errs *grpcerr.Boundary

	// queue admits calls: one token per call waiting or computing.
	queue chan struct{}
	// compute admits calls to the kernels, which already use every core.
	compute  chan struct{}
	draining atomic.Bool
	// drained is closed by drain: it ends the ForwardStreams, which would
	// otherwise hold the graceful stop until its timeout.
	drained   chan struct{}
	drainOnce sync.Once
	inflight  atomic.Int64
	calls     atomic.Uint64 // answered successfully
	rows      atomic.Uint64 // computed
}

var _ moegridv1.ExpertServer = (*expertService)(nil)

func newExpertService(nodeID string, cfg model.Config, store *shardStore, queueDepth, workers int, m *metrics, errs *grpcerr.Boundary) *expertService {
	return &expertService{
		nodeID:  nodeID,
		cfg:     cfg,
		store:   store,
		metrics: m,
		errs:    errs,
		queue:   make(chan struct{}, queueDepth),
		compute: make(chan struct{}, workers),
		drained: make(chan struct{}),
	}
}

// drain refuses new calls with UNAVAILABLE and ends every ForwardStream
// once its calls in flight are answered, so routers move to replicas.
func (s *expertService) drain() {
	s.draining.Store(true)
	s.drainOnce.Do(func() { close(s.drained) })
}

// ForwardStream serves Forward calls on one long-lived stream; each call
// is admitted, computed, counted and answered as the unary Forward's is.
func (s *expertService) ForwardStream(stream moegridv1.Expert_ForwardStreamServer) error {
	return moegridv1.ServeForwardStream(stream, s.drained, func(ctx context.Context, req *moegridv1.ForwardRequest) (*moegridv1.ForwardResponse, error) {
		resp, err := s.Forward(ctx, req)
		return resp, s.errs.Status("/moegrid.v1.Expert/ForwardStream", err)
	})
}

// Forward computes every batch of the request with the expert it names.
func (s *expertService) Forward(ctx context.Context, req *moegridv1.ForwardRequest) (*moegridv1.ForwardResponse, error) {
	start := time.Now()
	resp, rows, err := s.forward(ctx, req)
	s.metrics.observe(rows, time.Since(start), err)
	if err != nil {
		return nil, err
	}
	s.calls.Add(1)
	s.rows.Add(uint64(rows))
	return resp, nil
}

func (s *expertService) forward(ctx context.Context, req *moegridv1.ForwardRequest) (*moegridv1.ForwardResponse, int, error) {
	rows, err := s.validate(req)
	if err != nil {
		return nil, 0, err
	}
	if s.draining.Load() {
		return nil, 0, fmt.Errorf("%w: node %s is shutting down", errDraining, s.nodeID)
	}
	select {
	case s.queue <- struct{}{}:
	default:
		return nil, 0, fmt.Errorf("%w: node %s has %d calls queued", errBusy, s.nodeID, cap(s.queue))
	}
	defer func() { <-s.queue }()
	s.inflight.Add(1)
	defer s.inflight.Add(-1)

	set, release := s.store.acquire()
	defer release()
	layer := int(req.Layer)
	for _, b := range req.Batches {
		if set == nil || !set.Has(layer, int(b.Expert)) {
			return nil, 0, fmt.Errorf("%w: node %s does not hold expert %d for layer %d", errNotHeld, s.nodeID, b.Expert, layer)
		}
	}

	H := s.cfg.HiddenSize
	batches := make([]model.ExpertBatch, len(req.Batches))
	for i, b := range req.Batches {
		n := int(b.Rows)
		batches[i] = model.ExpertBatch{Expert: int(b.Expert), Rows: n, In: make([]float32, n*H), Out: make([]float32, n*H)}
		if err := moegridv1.DecodeActivations(batches[i].In, b.Data, n, H, req.Dtype); err != nil {
			return nil, 0, fmt.Errorf("%w: batch %d: %w", errInvalid, i, err)
		}
	}

	select {
	case s.compute <- struct{}{}:
	case <-ctx.Done():
		return nil, 0, ctx.Err()
	}
	err = set.Forward(ctx, layer, batches)
	<-s.compute
	if err != nil {
		return nil, 0, err
	}

	resp := &moegridv1.ForwardResponse{Batches: make([]*moegridv1.ExpertRows, len(batches))}
	for i, b := range batches {
		data, err := moegridv1.AppendActivations(make([]byte, 0, len(b.Out)*moegridv1.ElementSize(req.Dtype)), b.Out, req.Dtype)
		if err != nil {
			return nil, 0, err
		}
		resp.Batches[i] = &moegridv1.ExpertRows{Expert: uint32(b.Expert), Rows: uint32(b.Rows), Data: data}
	}
	return resp, rows, nil
}

// validate checks the request's shape against the model; it returns the
// number of rows.
func (s *expertService) validate(req *moegridv1.ForwardRequest) (int, error) {
	bad := func(format string, args ...any) (int, error) {
		return 0, fmt.Errorf("%w: "+format, append([]any{errInvalid}, args...)...)
	}
	size := moegridv1.ElementSize(req.Dtype)
	switch {
	case size == 0:
		return bad("dtype %v is not supported (want DTYPE_F32 or DTYPE_BF16)", req.Dtype)
	case int(req.Layer) >= s.cfg.NumHiddenLayers:
		return bad("layer %d is outside the model's %d layers", req.Layer, s.cfg.NumHiddenLayers)
	case int(req.Dim) != s.cfg.HiddenSize:
		return bad("dim %d does not match the model's hidden size %d", req.Dim, s.cfg.HiddenSize)
	case len(req.Batches) == 0:
		return bad("no batches")
	}
	seen := make(map[uint32]bool, len(req.Batches))
	rows := 0
	for i, b := range req.Batches {
		switch {
		case int(b.Expert) >= s.cfg.NumLocalExperts:
			return bad("batch %d: expert %d is outside the model's %d experts", i, b.Expert, s.cfg.NumLocalExperts)
		case seen[b.Expert]:
			return bad("batch %d: expert %d appears twice", i, b.Expert)
		case b.Rows == 0:
			return bad("batch %d (expert %d): no rows", i, b.Expert)
		}
		seen[b.Expert] = true
		rows += int(b.Rows)
		if rows > MaxRowsPerCall {
			return bad("more than %d rows in one call", MaxRowsPerCall)
		}
		if want := int(b.Rows) * int(req.Dim) * size; len(b.Data) != want {
			return bad("batch %d (expert %d): %d bytes of data for %d rows of %d %v elements, want %d", i, b.Expert, len(b.Data), b.Rows, req.Dim, req.Dtype, want)
		}
	}
	return rows, nil
}

// errorCodes maps the service's domain errors to gRPC codes.
var errorCodes = grpcerr.Table{
	{Err: errInvalid, Code: codes.InvalidArgument},
	{Err: errNotHeld, Code: codes.FailedPrecondition},
	{Err: model.ErrExpertNotHeld, Code: codes.FailedPrecondition},
	{Err: errBusy, Code: codes.ResourceExhausted},
	{Err: errDraining, Code: codes.Unavailable},
}

// toStatus is the status a client sees for err, for the call metrics; the
// server's boundary, which also logs unmapped errors, makes the same of it.
func toStatus(err error) error {
	return grpcerr.New(errorCodes, nil).Status("", err)
}
