// Package serve runs the network front of a moegrid process: a gRPC server
// with the standard health and reflection services and Prometheus RPC
// metrics, and an HTTP server with /metrics, /healthz and /readyz beside
// whatever the component adds. Every moegrid server (coordinator, expert
// node, router) is built on it, so they all answer the same probes.
//
// With Config.TLS set, gRPC is mutual TLS (a client certificate from the
// cluster CA is required at the handshake, and Config.Policy decides each
// call by the caller's role; health and reflection stay open to every
// holder of a certificate) and HTTP is TLS with the client certificate
// optional, so that probes and API clients without one get in.
//
// Both servers defend themselves against clients that hold connections
// without using them: a bounded number of connections (more wait in the
// kernel's accept queue), deadlines on a request's headers and body and on
// a gRPC handshake, idle connections closed, and gRPC keepalive pings that
// find dead peers and refuse clients that ping too often. Responses have no
// write deadline, since generation streams run as long as they run.
package serve

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/moegrid/moegrid/internal/mtls"
)

// Config says where to listen. An address with port 0 picks a free port;
// Servers reports the bound addresses.
type Config struct {
	GRPCAddr string
	// HTTPAddr is where /metrics, /healthz and /readyz listen; empty
	// disables the HTTP server.
	HTTPAddr string
	// StopTimeout bounds the graceful stop: calls still running after it
	// are cut off.
	StopTimeout time.Duration
	// MaxMessageBytes bounds a received gRPC message; 0 keeps gRPC's 4 MiB.
	MaxMessageBytes int
	// UnaryInterceptors and StreamInterceptors run after the metrics
	// interceptors, in order, e.g. authentication and then a component's
	// error boundary.
	UnaryInterceptors  []grpc.UnaryServerInterceptor
	StreamInterceptors []grpc.StreamServerInterceptor
	// TLS is the server's certificate and the CA its clients' must chain
	// to, read for every handshake, so that a reload applies to the next
	// connection. Nil serves plaintext.
	TLS *mtls.Source
	// Policy says which roles may call which gRPC methods when TLS is
	// set; a method it does not name is denied.
	Policy mtls.Policy
	// ReadyCheck, if set, must also pass for /readyz to answer 200, e.g. a
	// dependency that must answer.
	ReadyCheck func(context.Context) error

	// MaxConns bounds the connections each server (gRPC, HTTP) holds at
	// once; further clients wait in the accept queue until one closes.
	// 0 means 4096.
	MaxConns int
	// HeaderTimeout bounds reading an HTTP request's headers and a gRPC
	// connection's handshake. 0 means 10s.
	HeaderTimeout time.Duration
	// BodyTimeout bounds reading an HTTP request's body, counted from the
	// end of its headers. 0 means 1m.
	BodyTimeout time.Duration
	// IdleTimeout closes an HTTP keep-alive connection with no request,
	// and a gRPC connection with no call, for this long. 0 means 5m.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds an HTTP request's headers. 0 means 64 KiB.
	MaxHeaderBytes int
}

// The gRPC keepalive settings. The server pings a connection quiet for
// pingInterval and drops it when the ping is not answered within
// pingTimeout: a client that vanished (host gone, no FIN) frees its streams
// in under a minute. Clients may ping every minClientPing at most, also
// with no call running; one that pings more often is disconnected.
const (
	pingInterval  = 30 * time.Second
	pingTimeout   = 10 * time.Second
	minClientPing = 10 * time.Second
)

func (c *Config) setDefaults() {
	if c.StopTimeout == 0 {
		c.StopTimeout = 10 * time.Second
	}
	if c.MaxConns == 0 {
		c.MaxConns = 4096
	}
	if c.HeaderTimeout == 0 {
		c.HeaderTimeout = 10 * time.Second
	}
	if c.BodyTimeout == 0 {
		c.BodyTimeout = time.Minute
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 5 * time.Minute
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = 64 << 10
	}
}

// Servers are a component's network front. New builds them without
// binding anything; register services on GRPC and handlers on Mux before
// Bind, which opens the listeners, and Run, which serves on them.
type Servers struct {
	GRPC *grpc.Server
	Mux  *http.ServeMux

	cfg      Config
	log      *slog.Logger
	health   *health.Server
	grpcLis  net.Listener // set by Bind
	httpLis  net.Listener // set by Bind; nil when HTTP is disabled
	ready    atomic.Bool
	stopping atomic.Bool
}

// New checks cfg and builds the servers with the standard services; it
// binds nothing. reg (nil: a private registry) receives the RPC metrics
// and, if it is also a prometheus.Gatherer (as *prometheus.Registry is), is
// served on /metrics.
func New(cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Servers, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	cfg.setDefaults()
	if cfg.MaxConns < 0 || cfg.HeaderTimeout < 0 || cfg.BodyTimeout < 0 || cfg.IdleTimeout < 0 || cfg.MaxHeaderBytes < 0 {
		return nil, fmt.Errorf("serve: negative limit in %+v", cfg)
	}
	var unary []grpc.UnaryServerInterceptor
	var stream []grpc.StreamServerInterceptor
	var creds []grpc.ServerOption
	if cfg.TLS != nil {
		policy := cfg.Policy
		policy.Open = append(slices.Clone(policy.Open), mtls.HealthService, mtls.ReflectionService, mtls.ReflectionV1Alpha)
		authz, err := mtls.NewAuthorizer(policy)
		if err != nil {
			return nil, fmt.Errorf("serve: %w", err)
		}
		unary = append(unary, authz.UnaryInterceptor())
		stream = append(stream, authz.StreamInterceptor())
		creds = append(creds, grpc.Creds(credentials.NewTLS(mtls.ServerTLS(cfg.TLS))))
	}
	rpcMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	if err := reg.Register(rpcMetrics); err != nil {
		return nil, fmt.Errorf("serve: grpc metrics: %w", err)
	}
	opts := []grpc.ServerOption{
		grpc.ConnectionTimeout(cfg.HeaderTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: cfg.IdleTimeout,
			Time:              pingInterval,
			Timeout:           pingTimeout,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: minClientPing, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(append(append([]grpc.UnaryServerInterceptor{rpcMetrics.UnaryServerInterceptor()}, unary...), cfg.UnaryInterceptors...)...),
		grpc.ChainStreamInterceptor(append(append([]grpc.StreamServerInterceptor{rpcMetrics.StreamServerInterceptor()}, stream...), cfg.StreamInterceptors...)...),
	}
	opts = append(opts, creds...)
	if cfg.MaxMessageBytes > 0 {
		opts = append(opts, grpc.MaxRecvMsgSize(cfg.MaxMessageBytes), grpc.MaxSendMsgSize(cfg.MaxMessageBytes))
	}
	s := &Servers{
		GRPC:   grpc.NewServer(opts...),
		Mux:    http.NewServeMux(),
		cfg:    cfg,
		log:    log,
		health: health.NewServer(),
	}
	healthpb.RegisterHealthServer(s.GRPC, s.health)
	reflection.Register(s.GRPC)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	if g, ok := reg.(prometheus.Gatherer); ok {
		s.Mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{Registry: reg}))
	}
	s.Mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if s.stopping.Load() {
			http.Error(w, "stopping", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	s.Mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !s.ready.Load() || s.stopping.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		if cfg.ReadyCheck != nil {
			ctx, cancel := context.WithTimeout(r.Context(), time.Second)
			defer cancel()
			if err := cfg.ReadyCheck(ctx); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ready")
	})
	rpcMetrics.InitializeMetrics(s.GRPC)
	return s, nil
}

// Bind opens the listeners; the address accessors are valid after it. With
// Config.TLS set the HTTP listener speaks TLS (gRPC's credentials do the
// same for its connections). If Bind fails it holds nothing; if Run is not
// called after it, Close releases the listeners.
func (s *Servers) Bind() error {
	if s.grpcLis != nil {
		return errors.New("serve: Bind called twice")
	}
	gl, err := net.Listen("tcp", s.cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("serve: grpc listen %s: %w", s.cfg.GRPCAddr, err)
	}
	if s.cfg.HTTPAddr != "" {
		hl, err := net.Listen("tcp", s.cfg.HTTPAddr)
		if err != nil {
			gl.Close()
			return fmt.Errorf("serve: http listen %s: %w", s.cfg.HTTPAddr, err)
		}
		s.httpLis = netutil.LimitListener(hl, s.cfg.MaxConns)
		if s.cfg.TLS != nil {
			s.httpLis = tls.NewListener(s.httpLis, mtls.HTTPServerTLS(s.cfg.TLS))
		}
	}
	s.grpcLis = netutil.LimitListener(gl, s.cfg.MaxConns)
	return nil
}

// GRPCAddr is the bound gRPC address (after Bind).
func (s *Servers) GRPCAddr() string { return s.grpcLis.Addr().String() }

// HTTPAddr is the bound HTTP address (after Bind), "" when HTTP is
// disabled.
func (s *Servers) HTTPAddr() string {
	if s.httpLis == nil {
		return ""
	}
	return s.httpLis.Addr().String()
}

// SetReady sets /readyz and the gRPC health status of the server ("") and of
// the named services.
func (s *Servers) SetReady(ready bool, services ...string) {
	s.ready.Store(ready)
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ready && !s.stopping.Load() {
		st = healthpb.HealthCheckResponse_SERVING
	}
	for _, name := range append([]string{""}, services...) {
		s.health.SetServingStatus(name, st)
	}
}

// Run serves until ctx is done, then turns NOT_SERVING, stops taking new
// calls, lets running ones finish within StopTimeout, and returns. It binds
// first unless Bind has been called, and its listeners are closed when it
// returns.
func (s *Servers) Run(ctx context.Context) error {
	if s.grpcLis == nil {
		if err := s.Bind(); err != nil {
			return err
		}
	}
	defer s.Close()
	httpSrv := &http.Server{
		Handler:           bodyDeadline(s.Mux, s.cfg.BodyTimeout, s.log),
		ReadHeaderTimeout: s.cfg.HeaderTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := s.GRPC.Serve(s.grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serve: grpc: %w", err)
		}
		return nil
	})
	if s.httpLis != nil {
		g.Go(func() error {
			if err := httpSrv.Serve(s.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve: http: %w", err)
			}
			return nil
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		s.stopping.Store(true)
		s.health.Shutdown()
		// Both servers drain at once: an HTTP stream and a gRPC stream get
		// the same StopTimeout.
		httpDone := make(chan error, 1)
		go func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.StopTimeout)
			defer cancel()
			err := httpSrv.Shutdown(sctx)
			if err != nil {
				httpSrv.Close()
			}
			httpDone <- err
		}()
		done := make(chan struct{})
		go func() {
			s.GRPC.GracefulStop()
			close(done)
		}()
		timer := time.NewTimer(s.cfg.StopTimeout)
		defer timer.Stop()
		select {
		case <-done:
		case <-timer.C:
			s.log.Warn("graceful stop timed out; cutting off calls", "timeout", s.cfg.StopTimeout)
			s.GRPC.Stop()
			<-done
		}
		if err := <-httpDone; err != nil {
			s.log.Warn("graceful HTTP stop timed out; cutting off requests", "timeout", s.cfg.StopTimeout)
		}
		return nil
	})
	return g.Wait()
}

// bodyDeadline bounds reading a request's body to timeout. It is not
// http.Server.ReadTimeout because that deadline stays on the connection
// after the body is read, and when it passes net/http cancels the request's
// context: every SSE stream longer than it would be cut off. Here the
// deadline ends when the body has been read.
func bodyDeadline(h http.Handler, timeout time.Duration, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			h.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		if err := rc.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			log.Debug("no read deadline on this connection", "err", err)
			h.ServeHTTP(w, r)
			return
		}
		r.Body = &deadlineBody{ReadCloser: r.Body, clear: func() { rc.SetReadDeadline(time.Time{}) }}
		h.ServeHTTP(w, r)
	})
}

// deadlineBody clears the connection's read deadline once the body has
// been read to its end. After any other error the deadline stays: the
// server discards an unread body before it reuses the connection, and that
// must not wait on a trickling client either.
type deadlineBody struct {
	io.ReadCloser
	clear func()
	once  sync.Once
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.once.Do(b.clear)
	}
	return n, err
}

// Close releases the listeners of servers that will not Run; it may be
// called more than once, and before Bind.
func (s *Servers) Close() {
	if s.grpcLis != nil {
		s.grpcLis.Close()
	}
	if s.httpLis != nil {
		s.httpLis.Close()
	}
}
