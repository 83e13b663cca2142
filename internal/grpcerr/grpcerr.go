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
	// Classify, if set, is asked after the table for errors it does not
	// match, e.g. to map a dependency's transport errors; ok false leaves
	// the error to the default handling.
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

// Status converts err, returned by method, to a status error; nil stays nil.
func (b *Boundary) Status(method string, err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	for _, r := range b.table {
		if errors.Is(err, r.Err) {
			return status.Error(r.Code, err.Error())
		}
	}
	if b.Classify != nil {
		if code, ok := b.Classify(err); ok {
			return status.Error(code, err.Error())
		}
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return st.Err()
	}
	b.log.Error("internal error", "method", method, "err", err)
	return status.Error(codes.Internal, "internal error")
}

// Unary is the boundary as a unary server interceptor.
func (b *Boundary) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if err != nil {
			return nil, b.Status(info.FullMethod, err)
		}
		return resp, nil
	}
}

// Stream is the boundary as a stream server interceptor.
func (b *Boundary) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return b.Status(info.FullMethod, handler(srv, ss))
	}
}
