// Package etcdtest starts a real single-member etcd inside a test process,
// for the tests of every package that talks to etcd (cluster, coordinator,
// router, expertnode). It is an ordinary package so that those tests can share
// it; nothing outside tests should import it.
//
// Clients reach the server through a small TCP proxy owned by the Server. The
// proxy lets a test cut every client connection at once, which is what a
// crashed etcd or a network partition looks like to a client, without waiting
// for the server's graceful shutdown of long-lived watch streams:
//
//	srv := etcdtest.Start(t)
//	cli := srv.Client(t)
//	srv.Restart() // stop (connections cut) and start again on the same data and port
//
// StartTLS starts one that speaks TLS to clients and requires a client
// certificate from its CA, as a production etcd with ClientCertAuth does.
//
// A Server is safe for concurrent use by the test's goroutines.
package etcdtest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// startTimeout bounds how long the server may take to become ready.
const startTimeout = 30 * time.Second

// Server is an embedded etcd member on 127.0.0.1 behind a proxy.
type Server struct {
	t   testing.TB
	dir string
	tls *TLS

	// proxyAddr is the address clients dial (stable across restarts);
	// clientAddr and peerAddr are etcd's own listeners.
	proxyAddr, clientAddr, peerAddr string

	// mu protects the fields below.
	mu      sync.Mutex
	etcd    *embed.Etcd
	proxy   *proxy
	stopped bool
}

// TLS is a server's TLS to its clients.
type TLS struct {
	// CertFile and KeyFile are etcd's certificate, which must name
	// 127.0.0.1, and its key; CAFile is the bundle client certificates
	// must chain to.
	CertFile, KeyFile, CAFile string
	// Client is what Client dials with: a client certificate and the CA
	// of etcd's certificate.
	Client *tls.Config
}

// Start starts a fresh etcd with its data in t.TempDir() and registers its
// shutdown with t.Cleanup. It fails the test if etcd does not become ready.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, nil)
}

// StartTLS is Start with TLS to clients and client certificates required.
func StartTLS(t testing.TB, cfg TLS) *Server {
	t.Helper()
	if cfg.CertFile == "" || cfg.KeyFile == "" || cfg.CAFile == "" || cfg.Client == nil {
		t.Fatalf("etcdtest: StartTLS needs a certificate, key, CA file and client config: %+v", cfg)
	}
	return start(t, &cfg)
}

func start(t testing.TB, cfg *TLS) *Server {
	t.Helper()
	s := &Server{t: t, dir: t.TempDir(), tls: cfg}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		// Free ports are picked by binding :0 and releasing them; another
		// process may grab one in between, so a failed start is retried.
		var ports []string
		if ports, err = freePorts(3); err != nil {
			continue
		}
		s.proxyAddr, s.clientAddr, s.peerAddr = ports[0], ports[1], ports[2]
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("etcdtest: start: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Endpoints returns the client endpoints, the same for the Server's whole life.
func (s *Server) Endpoints() []string { return []string{s.scheme() + "://" + s.proxyAddr} }

func (s *Server) scheme() string {
	if s.tls != nil {
		return "https"
	}
	return "http"
}

// Client returns a new client for the server, closed when the test ends. It
// reconnects at most 500 ms apart, so that tests do not wait on gRPC's
// growing backoff after Restart.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	var tlsCfg *tls.Config
	if s.tls != nil {
		tlsCfg = s.tls.Client
	}
	cli, err := clientv3.New(clientv3.Config{
		TLS:         tlsCfg,
		Endpoints:   s.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, MaxDelay: 500 * time.Millisecond},
			MinConnectTimeout: time.Second,
		})},
	})
	if err != nil {
		t.Fatalf("etcdtest: client: %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// Stop cuts every client connection and stops etcd, as a crash of the etcd
// process would; the data directory is kept for Start or Restart. Stopping a
// stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	s.stopped = true
	s.proxy.close()
	s.etcd.Close()
	<-s.etcd.Err() // closed once every etcd goroutine is done
}

// Resume starts a stopped server again on the same data directory and
// addresses. It fails the test if etcd does not come back.
func (s *Server) Resume() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.stopped {
		return
	}
	var err error
	// The ports were ours a moment ago; retry briefly while the kernel
	// releases them.
	for attempt := 0; attempt < 50; attempt++ {
		if err = s.startLocked(); err == nil {
			s.stopped = false
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("etcdtest: resume: %v", err)
}

// Restart stops the server and starts it again on the same data directory
// and addresses: everything written survives, every connection breaks.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.Resume()
}

// Partition cuts every client connection and refuses new ones while etcd
// keeps running (its leases keep counting down); Heal ends it.
func (s *Server) Partition() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.proxy.setBlocked(true)
}

// Heal ends a Partition.
func (s *Server) Heal() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.proxy.setBlocked(false)
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.startLocked()
}

func (s *Server) startLocked() error {
	cfg := embed.NewConfig()
	cfg.Name = "etcdtest"
	cfg.Dir = s.dir
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = true
	// Fast raft timings: a single member elects itself within a few ticks.
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	cu := url.URL{Scheme: s.scheme(), Host: s.clientAddr}
	pu := url.URL{Scheme: "http", Host: s.peerAddr}
	au := url.URL{Scheme: s.scheme(), Host: s.proxyAddr}
	if s.tls != nil {
		cfg.ClientTLSInfo = transport.TLSInfo{
			CertFile: s.tls.CertFile, KeyFile: s.tls.KeyFile, TrustedCAFile: s.tls.CAFile, ClientCertAuth: true,
		}
	}
	cfg.ListenClientUrls = []url.URL{cu}
	cfg.AdvertiseClientUrls = []url.URL{au}
	cfg.ListenPeerUrls = []url.URL{pu}
	cfg.AdvertisePeerUrls = []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.Metrics = "basic"

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(startTimeout):
		e.Server.Stop()
		e.Close()
		return errors.New("etcd not ready in time")
	}
	p, err := newProxy(s.proxyAddr, s.clientAddr)
	if err != nil {
		e.Close()
		<-e.Err()
		return err
	}
	s.etcd, s.proxy = e, p
	return nil
}

func freePorts(n int) ([]string, error) {
	var addrs []string
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			_ = l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

// proxy forwards TCP connections from its listener to etcd and can cut them.
type proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	// mu protects conns and blocked.
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	blocked bool
}

func newProxy(listen, target string) (*proxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("proxy listen %s: %w", listen, err)
	}
	p := &proxy{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		blocked := p.blocked
		p.mu.Unlock()
		if blocked {
			_ = c.Close()
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *proxy) serve(c net.Conn) {
	defer p.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	up, err := (&net.Dialer{}).DialContext(ctx, "tcp", p.target)
	cancel()
	if err != nil {
		_ = c.Close()
		return
	}
	if !p.track(c, up) {
		return
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	_ = c.Close()
	_ = up.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

// track records a connection pair; it closes both and reports false when the
// proxy is blocked.
func (p *proxy) track(c, up net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.blocked {
		_ = c.Close()
		_ = up.Close()
		return false
	}
	p.conns[c] = struct{}{}
	p.conns[up] = struct{}{}
	return true
}

func (p *proxy) setBlocked(b bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = b
	if b {
		p.cutLocked()
	}
}

func (p *proxy) cutLocked() {
	for c := range p.conns {
		_ = c.Close()
	}
}

// close stops accepting, cuts every connection and waits for the proxy's
// goroutines.
func (p *proxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	p.blocked = true
	p.cutLocked()
	p.mu.Unlock()
	p.wg.Wait()
}
