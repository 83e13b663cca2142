package mtls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/internal/pki"
)

// ErrNoIdentity is returned when a caller has no verified certificate that
// names a moegrid identity.
var ErrNoIdentity = errors.New("mtls: no verified peer identity")

// IdentityFromTLS is the identity of the verified peer of a connection: the
// URI SAN of the leaf of its first verified chain. A connection whose peer
// certificate was not verified has none.
func IdentityFromTLS(cs *tls.ConnectionState) (pki.Identity, error) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return pki.Identity{}, ErrNoIdentity
	}
	id, err := pki.IdentityOf(cs.VerifiedChains[0][0])
	if err != nil {
		return pki.Identity{}, fmt.Errorf("%w: %w", ErrNoIdentity, err)
	}
	return id, nil
}

// IdentityFromContext is the identity of the caller of a gRPC call.
func IdentityFromContext(ctx context.Context) (pki.Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return pki.Identity{}, ErrNoIdentity
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return pki.Identity{}, fmt.Errorf("%w: the connection is not TLS", ErrNoIdentity)
	}
	return IdentityFromTLS(&info.State)
}

// RoleFromContext is the role of the caller of a gRPC call.
func RoleFromContext(ctx context.Context) (pki.Role, error) {
	id, err := IdentityFromContext(ctx)
	return id.Role, err
}

// Well-known services that are usually open to every caller with a
// verified certificate, for Policy.Open.
const (
	HealthService     = "/grpc.health.v1.Health/*"
	ReflectionService = "/grpc.reflection.v1.ServerReflection/*"
	ReflectionV1Alpha = "/grpc.reflection.v1alpha.ServerReflection/*"
)

// Policy says which roles may call which gRPC methods. Keys and Open
// entries are full method names, /package.Service/Method, or
// /package.Service/* for every method of a service; an exact name wins
// over its service's entry. A method in neither is denied to everyone.
type Policy struct {
	Allow map[string][]pki.Role
	// Open methods need no identity: any caller the transport let in may
	// call them (with ServerTLS, any holder of a certificate from the CA).
	Open []string
}

// Authorizer enforces a Policy on a gRPC server.
type Authorizer struct {
	allow map[string][]pki.Role
	open  map[string]bool
}

// NewAuthorizer checks the policy and returns its enforcer.
func NewAuthorizer(p Policy) (*Authorizer, error) {
	var errs []error
	a := &Authorizer{allow: make(map[string][]pki.Role, len(p.Allow)), open: make(map[string]bool, len(p.Open))}
	for m, roles := range p.Allow {
		if err := checkMethod(m); err != nil {
			errs = append(errs, err)
		}
		if len(roles) == 0 {
			errs = append(errs, fmt.Errorf("mtls: policy for %s allows no role; leave it out to deny it", m))
		}
		for _, r := range roles {
			if _, err := pki.ParseRole(string(r)); err != nil {
				errs = append(errs, fmt.Errorf("mtls: policy for %s: %w", m, err))
			}
		}
		a.allow[m] = slices.Clone(roles)
	}
	for _, m := range p.Open {
		if err := checkMethod(m); err != nil {
			errs = append(errs, err)
		}
		if _, ok := p.Allow[m]; ok {
			errs = append(errs, fmt.Errorf("mtls: policy lists %s both as open and with roles", m))
		}
		a.open[m] = true
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return a, nil
}

func checkMethod(m string) error {
	svc, method, ok := strings.Cut(strings.TrimPrefix(m, "/"), "/")
	if !strings.HasPrefix(m, "/") || !ok || svc == "" || method == "" || strings.Contains(method, "/") {
		return fmt.Errorf("mtls: policy method %q: want /package.Service/Method or /package.Service/*", m)
	}
	return nil
}

// Authorize decides a call of fullMethod in ctx: nil, or a status error
// with codes.Unauthenticated (no verified identity) or
// codes.PermissionDenied (the caller's role may not call it).
func (a *Authorizer) Authorize(ctx context.Context, fullMethod string) error {
	service := fullMethod[:strings.LastIndex(fullMethod, "/")+1] + "*"
	if a.open[fullMethod] || (a.open[service] && a.allow[fullMethod] == nil) {
		return nil
	}
	id, err := IdentityFromContext(ctx)
	if err != nil {
		return status.Errorf(codes.Unauthenticated, "%s needs a client certificate with a moegrid identity: %v", fullMethod, err)
	}
	roles, ok := a.allow[fullMethod]
	if !ok {
		roles = a.allow[service]
	}
	if !slices.Contains(roles, id.Role) {
		return status.Errorf(codes.PermissionDenied, "%s is not allowed for role %s (caller %s)", fullMethod, id.Role, id)
	}
	return nil
}

// UnaryInterceptor enforces the policy on unary calls.
func (a *Authorizer) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := a.Authorize(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamInterceptor enforces the policy on streaming calls.
func (a *Authorizer) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := a.Authorize(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return handler(srv, ss)
	}
}

// RequireRole is HTTP middleware that lets a request through only if its
// connection's verified client certificate names one of the roles: 401
// without a verified identity, 403 for another role.
func RequireRole(next http.Handler, roles ...pki.Role) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := IdentityFromTLS(r.TLS)
		if err != nil {
			http.Error(w, "a client certificate with a moegrid identity is required", http.StatusUnauthorized)
			return
		}
		if !slices.Contains(roles, id.Role) {
			http.Error(w, fmt.Sprintf("%s %s is not allowed for role %s", r.Method, r.URL.Path, id.Role), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}
