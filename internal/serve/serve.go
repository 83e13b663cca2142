// Package serve runs the network front of a moegrid process: a gRPC server
// with the standard health and reflection services and Prometheus RPC
// metrics, and an HTTP server with /metrics, /healthz and /readyz beside
// whatever the component adds. Every moegrid server (coordinator, expert
// node, router) is built on it, so they all answer the same probes.
package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
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
	// UnaryInterceptors run after the metrics interceptor, e.g. a
	// component's error boundary.
	UnaryInterceptors []grpc.UnaryServerInterceptor
	// ReadyCheck, if set, must also pass for /readyz to answer 200, e.g. a
	// dependency that must answer.
	ReadyCheck func(context.Context) error
}

// Servers are a component's listeners. Register services on GRPC and
// handlers on Mux before Run.
type Servers struct {
	GRPC *grpc.Server
	Mux  *http.ServeMux

	cfg      Config
	log      *slog.Logger
	health   *health.Server
	grpcLis  net.Listener
	httpLis  net.Listener
	ready    atomic.Bool
	stopping atomic.Bool
}

// Listen opens the listeners and registers the standard services; reg
// receives the RPC metrics and, if it is also a prometheus.Gatherer (as
// *prometheus.Registry is), is served on /metrics.
func Listen(cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Servers, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	gl, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return nil, fmt.Errorf("serve: grpc listen %s: %w", cfg.GRPCAddr, err)
	}
	var hl net.Listener
	if cfg.HTTPAddr != "" {
		if hl, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			gl.Close()
			return nil, fmt.Errorf("serve: http listen %s: %w", cfg.HTTPAddr, err)
		}
	}
	rpcMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	if err := reg.Register(rpcMetrics); err != nil {
		gl.Close()
		if hl != nil {
			hl.Close()
		}
		return nil, fmt.Errorf("serve: grpc metrics: %w", err)
	}
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(append([]grpc.UnaryServerInterceptor{rpcMetrics.UnaryServerInterceptor()}, cfg.UnaryInterceptors...)...),
		grpc.ChainStreamInterceptor(rpcMetrics.StreamServerInterceptor()),
	}
	if cfg.MaxMessageBytes > 0 {
		opts = append(opts, grpc.MaxRecvMsgSize(cfg.MaxMessageBytes), grpc.MaxSendMsgSize(cfg.MaxMessageBytes))
	}
	s := &Servers{
		GRPC:    grpc.NewServer(opts...),
		Mux:     http.NewServeMux(),
		cfg:     cfg,
		log:     log,
		health:  health.NewServer(),
		grpcLis: gl,
		httpLis: hl,
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

// GRPCAddr is the bound gRPC address.
func (s *Servers) GRPCAddr() string { return s.grpcLis.Addr().String() }

// HTTPAddr is the bound HTTP address, "" when HTTP is disabled.
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
// calls, lets running ones finish within StopTimeout, and returns.
func (s *Servers) Run(ctx context.Context) error {
	httpSrv := &http.Server{Handler: s.Mux, ReadHeaderTimeout: 10 * time.Second}
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
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.StopTimeout)
		defer cancel()
		return httpSrv.Shutdown(sctx)
	})
	return g.Wait()
}

// Close releases the listeners of servers that will not Run.
func (s *Servers) Close() {
	s.grpcLis.Close()
	if s.httpLis != nil {
		s.httpLis.Close()
	}
}
