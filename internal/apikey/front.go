package apikey

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// bearer returns the token of an "Bearer <token>" authorization value.
func bearer(v string) string {
	scheme, token, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// Code is the gRPC code of an Admit error.
func Code(err error) codes.Code {
	switch outcome(err) {
	case "admitted":
		return codes.OK
	case "unauthenticated":
		return codes.Unauthenticated
	case "permission_denied":
		return codes.PermissionDenied
	case "resource_exhausted":
		return codes.ResourceExhausted
	}
	return codes.Internal
}

func retryAfter(err error) (time.Duration, bool) {
	if qe, ok := errors.AsType[*QuotaError](err); ok {
		return qe.RetryAfter, true
	}
	return 0, false
}

// HTTP returns next behind the guard: a request needs a key allowed api in
// "Authorization: Bearer <key>"; refusals are OpenAI-shaped JSON errors
// (401 with WWW-Authenticate, 403, 429 with Retry-After).
func (g *Guard) HTTP(api string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, err := g.Admit(bearer(r.Header.Get("Authorization")), api)
		if err != nil {
			writeHTTPError(w, err)
			return
		}
		defer a.Release()
		next.ServeHTTP(w, r.WithContext(NewContext(r.Context(), a)))
	})
}

func writeHTTPError(w http.ResponseWriter, err error) {
	httpStatus, typ, code := http.StatusInternalServerError, "server_error", "internal_error"
	switch Code(err) {
	case codes.Unauthenticated:
		httpStatus, typ, code = http.StatusUnauthorized, "invalid_request_error", "invalid_api_key"
		w.Header().Set("WWW-Authenticate", `Bearer realm="moegrid"`)
	case codes.PermissionDenied:
		httpStatus, typ, code = http.StatusForbidden, "permission_error", "permission_denied"
	case codes.ResourceExhausted:
		httpStatus, typ, code = http.StatusTooManyRequests, "rate_limit_error", "rate_limit_exceeded"
	}
	if d, ok := retryAfter(err); ok {
		w.Header().Set("Retry-After", strconv.Itoa(int(d/time.Second)))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpStatus)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"message": err.Error(), "type": typ, "param": nil, "code": code,
	}})
}

// APIOf names the API of a gRPC method, "" for one that needs no key
// (health, reflection).
type APIOf func(fullMethod string) string

// UnaryServerInterceptor guards the unary methods apiOf names.
func (g *Guard) UnaryServerInterceptor(apiOf APIOf) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		api := apiOf(info.FullMethod)
		if api == "" {
			return handler(ctx, req)
		}
		a, err := g.Admit(grpcKey(ctx), api)
		if err != nil {
			if md, ok := retryMD(err); ok {
				grpc.SetTrailer(ctx, md)
			}
			return nil, status.Error(Code(err), err.Error())
		}
		defer a.Release()
		return handler(NewContext(ctx, a), req)
	}
}

// StreamServerInterceptor guards the streaming methods apiOf names.
func (g *Guard) StreamServerInterceptor(apiOf APIOf) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		api := apiOf(info.FullMethod)
		if api == "" {
			return handler(srv, ss)
		}
		a, err := g.Admit(grpcKey(ss.Context()), api)
		if err != nil {
			if md, ok := retryMD(err); ok {
				ss.SetTrailer(md)
			}
			return status.Error(Code(err), err.Error())
		}
		defer a.Release()
		return handler(srv, &admittedStream{ServerStream: ss, ctx: NewContext(ss.Context(), a)})
	}
}

func grpcKey(ctx context.Context) string {
	vals := metadata.ValueFromIncomingContext(ctx, "authorization")
	if len(vals) != 1 {
		return ""
	}
	return bearer(vals[0])
}

func retryMD(err error) (metadata.MD, bool) {
	d, ok := retryAfter(err)
	if !ok {
		return nil, false
	}
	return metadata.Pairs("retry-after", strconv.Itoa(int(d/time.Second))), true
}

type admittedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *admittedStream) Context() context.Context { return s.ctx }
