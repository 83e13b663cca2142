// Package grpcerr is the gRPC error boundary of every moegrid server: the
// one place where a handler's error becomes the status a client sees.
//
// Each server declares a Table mapping its sentinel errors (matched with
// errors.Is) to codes. The caller's own cancellation and deadline come back
// as Canceled and DeadlineExceeded, errors that already carry a gRPC status
// pass through, and anything else is logged with its method and returned as
// Internal with a generic message, so internal details never leak and
// nothing reaches a client as Unknown.
package grpcerr

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Rule maps errors matching Err (by errors.Is) to Code.
type Rule struct {
	Err  error
	Code codes.Code
}

// Table is a server's error mapping, tried in order.
type Table []Rule

// Boundary turns handler errors into gRPC statuses. Its methods are safe
// for concurrent use.
type Boundary struct {
	table Table
	log   *slog.Logger
	// Classify, if set, is asked first, e.g. to map a dependency's
	// transport errors (which carry gRPC statuses of their own) before they
	// would pass through; ok false leaves the error to the table.
	Classify func(error) (code codes.Code, ok bool)
}

// New returns a boundary over table that logs unmapped errors to log (nil
// discards).
func New(table Table, log *slog.Logger) *Boundary {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Boundary{table: table, log: log}
}

// Code is the code err maps to by the table alone, and whether it mapped:
// context errors, the table's sentinels, then errors that carry a status
// other than Unknown.
func (t Table) Code(err error) (codes.Code, bool) {
	switch {
	case err == nil:
		return codes.OK, true
	case errors.Is(err, context.Canceled):
		return codes.Canceled, true
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded, true
	}
	for _, r := range t {
		if errors.Is(err, r.Err) {
			return r.Code, true
		}
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return st.Code(), true
	}
	return codes.Internal, false
}

// Status converts err, returned by method, to a status error; nil stays nil.
func (b *Boundary) Status(method string, err error) error {
	if err == nil {
		return nil
	}
	if b.Classify != nil {
		if code, ok := b.Classify(err); ok {
			return status.Error(code, err.Error())
		}
	}
	code, ok := b.table.Code(err)
	if st, isStatus := status.FromError(err); ok && isStatus && st.Code() == code {
		return err
	}
	if !ok {
		b.log.Error("internal error", "method", method, "err", err)
		return status.Error(codes.Internal, "internal error")
	}
	return status.Error(code, err.Error())
}

// Unary is the boundary as a unary server interceptor.
func (b *Boundary) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if err != nil {
			return nil, b.callStatus(ctx, info.FullMethod, err)
		}
		return resp, nil
	}
}

// Stream is the boundary as a stream server interceptor.
func (b *Boundary) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := handler(srv, ss); err != nil {
			return b.callStatus(ss.Context(), info.FullMethod, err)
		}
		return nil
	}
}

// callStatus is Status, except that a caller who cancelled or ran out of
// time gets that, whatever the handler made of it.
func (b *Boundary) callStatus(ctx context.Context, method string, err error) error {
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	return b.Status(method, err)
}
