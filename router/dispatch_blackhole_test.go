package router

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/moegrid/moegrid/internal/mtls"
	"github.com/moegrid/moegrid/internal/pki"
	"github.com/moegrid/moegrid/internal/pki/pkitest"
	"github.com/moegrid/moegrid/model"
)

// blackholeProxy forwards TCP connections to a target until blackhole is
// called; from then on it neither reads from nor writes to either side and
// closes neither, so the kernel's buffers fill and stay full: what a
// firewall dropping every packet to the target's port looks like to the
// dialler.
type blackholeProxy struct {
	lis    net.Listener
	target string
	holed  chan struct{} // closed by blackhole
	once   sync.Once
	// dropped is closed once the dialler has written past the blackhole:
	// its writes fill the buffers from then on.
	dropped     chan struct{}
	droppedOnce sync.Once
	wg          sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn // protected by mu
}

func startBlackholeProxy(t *testing.T, target string) *blackholeProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackholeProxy{lis: lis, target: target, holed: make(chan struct{}), dropped: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *blackholeProxy) addr() string { return p.lis.Addr().String() }

// blackhole stops all traffic through the proxy, now and for good.
func (p *blackholeProxy) blackhole() { p.once.Do(func() { close(p.holed) }) }

func (p *blackholeProxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.lis.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, in, out)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(out, in, true)
		go p.pipe(in, out, false)
	}
}

// pipe copies from src, the dialler's side if fromDialler, to dst until
// the blackhole, then waits, holding what it read, until the proxy is
// closed.
func (p *blackholeProxy) pipe(dst, src net.Conn, fromDialler bool) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		select {
		case <-p.holed:
			return
		default:
		}
		n, err := src.Read(buf)
		select {
		case <-p.holed:
			if fromDialler && n > 0 {
				p.droppedOnce.Do(func() { close(p.dropped) })
			}
			return
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				dst.(*net.TCPConn).CloseWrite()
			}
			return
		}
	}
}

// giveUp closes the connections made so far, as the dialler's kernel does
// once its data has gone unacknowledged for TCP_USER_TIMEOUT, which gRPC
// sets to its keepalive timeout. Connections made later stay open and
// silent: their handshakes never finish.
func (p *blackholeProxy) giveUp() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}

func (p *blackholeProxy) close() {
	p.lis.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// With ejection and probing on, a node whose port is blackholed under load
// costs a hop about a hedge delay at worst, its probes included: once the
// router's kernel gives up on the connection, gRPC redials it and the dial
// hangs, and opening the stream for a probe waits on that dial, which must
// not hold up the dispatcher (issue 10: 5 s gaps between tokens).
func TestDispatcherBlackholedNode(t *testing.T) {
	p := pkitest.New(t)
	creds := grpc.Creds(credentials.NewTLS(mtls.ServerTLS(p.Source(t, pki.RoleExpertNode, "expert"))))
	a, b := startExpertNode(t, "a", creds), startExpertNode(t, "b", creds)
	proxy := startBlackholeProxy(t, a.addr)
	holed := Endpoint{NodeID: "a", Addr: proxy.addr()}
	topo := newTopology(1, b)
	for l := range fx.model.Config.NumHiddenLayers {
		for e := range fx.model.Config.NumLocalExperts {
			topo.set(e, l, holed, b.endpoint())
		}
	}
	// HedgeMax bounds the hedge delay of a size class with no history yet,
	// so that the bound below holds however the rows fall.
	const hedgeMax = 50 * time.Millisecond
	d := newTestDispatcher(t, DispatchConfig{TLS: p.Source(t, pki.RoleRouter, "router"), HedgeMax: hedgeMax}, topo)

	// Streams step through the layers concurrently; one of them blackholes
	// the node after a few steps, and the kernel gives up on its
	// connection soon after. The default backoff has the first probe come
	// a second after the ejection.
	const streams, before = 4, 20
	after := 2500 * time.Millisecond
	var (
		mu sync.Mutex
		// The longest Forward before the blackhole (the first step's,
		// which dials, aside) and after it.
		longestBefore, longestAfter time.Duration
		errs                        []error
		holedAt                     time.Time
	)
	var wg sync.WaitGroup
	for s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for step := 0; ; step++ {
				mu.Lock()
				if s == 0 && step == before {
					proxy.blackhole()
					time.AfterFunc(300*time.Millisecond, proxy.giveUp)
					holedAt = time.Now()
				}
				done := !holedAt.IsZero() && time.Since(holedAt) > after
				mu.Unlock()
				if done {
					return
				}
				for l := range fx.model.Config.NumHiddenLayers {
					// Decode-sized rows and, every few steps, a prefill
					// chunk past the 64 KiB window.
					rows := []int{1, 2}
					if step%5 == 0 {
						rows = []int{200, 300}
					}
					batches := expertBatches(uint64(s<<20+step), []int{1, 6}, rows)
					start := time.Now()
					err := d.Forward(testContext(t), l, batches)
					took := time.Since(start)
					if err == nil {
						err = sameBits(inProcess(t, l, batches), outputs(batches))
					}
					mu.Lock()
					switch {
					case !holedAt.IsZero():
						longestAfter = max(longestAfter, took)
					case step > 0:
						longestBefore = max(longestBefore, took)
					}
					if err != nil {
						errs = append(errs, err)
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	// A second ejection is the first probe failing.
	if got := nodeCount(d.metrics.ejections, "a"); got < 2 {
		t.Errorf("ejections of the blackholed node: %v, want at least 2 (ejected, then probed)", got)
	}
	// The Forwards are slow enough without the blackhole on a busy
	// machine or with the race detector; the blackhole may add ten hedge
	// delays to them, not seconds.
	t.Logf("longest Forward: %v before the blackhole, %v after", longestBefore, longestAfter)
	if bound := longestBefore + 10*hedgeMax; longestAfter > bound {
		t.Errorf("longest Forward after the blackhole took %v, want at most %v (the longest before, %v, and ten hedge delays)",
			longestAfter, bound, longestBefore)
	}
}

// Removing a node whose connection is blackholed with its send buffer full
// must not hold up the topology's watch loop, which calls Retain: gRPC's
// Close waits up to 5 s there to write its GOAWAY. Dispatcher.Close still
// waits for that close, so that nothing outlives the dispatcher.
func TestDispatcherRetainBlackholedNode(t *testing.T) {
	// The node's flow-control windows are larger than the call, so that
	// only the kernel's buffers, full once the proxy stops reading, hold
	// up the router's writes.
	n := startExpertNode(t, "a", grpc.InitialWindowSize(1<<30), grpc.InitialConnWindowSize(1<<30))
	proxy := startBlackholeProxy(t, n.addr)
	ep := Endpoint{NodeID: "a", Addr: proxy.addr()}
	topo := newTopology(1, n)
	for l := range fx.model.Config.NumHiddenLayers {
		for e := range fx.model.Config.NumLocalExperts {
			topo.set(e, l, ep)
		}
	}
	d := NewDispatcher(DispatchConfig{WaitForHolder: time.Minute}, topo, fx.model.Config.HiddenSize, nil, nil)
	defer d.Close()
	if err := d.Forward(testContext(t), 0, expertBatches(1, []int{0}, []int{1})); err != nil {
		t.Fatal(err)
	}

	// The window updates and BDP pings the answer set off are written in
	// the background; once they are out, the stream is open and quiet, and
	// the first bytes to reach the hole are the call below.
	time.Sleep(100 * time.Millisecond)

	// A call of 64 MiB, far more than the loopback buffers hold, to the
	// blackholed node; it waits for a holder once the node is removed,
	// until cancelled.
	proxy.blackhole()
	ctx, cancel := context.WithCancel(testContext(t))
	forwarded := make(chan error, 1)
	go func() {
		H := fx.model.Config.HiddenSize
		rows := 64 << 20 / 4 / H
		b := model.ExpertBatch{Expert: 0, Rows: rows, In: make([]float32, rows*H), Out: make([]float32, rows*H)}
		forwarded <- d.Forward(ctx, 0, []model.ExpertBatch{b})
	}()
	// Once the call's first bytes reach the hole, the rest fills the
	// loopback buffers in milliseconds.
	<-proxy.dropped
	time.Sleep(200 * time.Millisecond)
	before := goleak.IgnoreCurrent()

	// What the topology's watch loop does when the node leaves.
	for l := range fx.model.Config.NumHiddenLayers {
		for e := range fx.model.Config.NumLocalExperts {
			topo.set(e, l)
		}
	}
	d.mu.Lock()
	old := d.conns[ep.Addr]
	d.mu.Unlock()
	start := time.Now()
	d.Retain(map[string]bool{})
	if took := time.Since(start); took > 200*time.Millisecond {
		t.Errorf("Retain took %v, want at most 200ms", took)
	}
	// The address can be dialled again meanwhile.
	if c, err := d.conn(ep); err != nil || c == old {
		t.Errorf("conn after Retain: %p, %v; want a new connection (the old one is %p)", c, err, old)
	}

	cancel()
	if err := <-forwarded; !errors.Is(err, context.Canceled) {
		t.Errorf("Forward to the removed node: %v, want %v", err, context.Canceled)
	}
	start = time.Now()
	if err := d.Close(); err != nil {
		t.Errorf("Dispatcher.Close: %v", err)
	}
	took := time.Since(start)
	t.Logf("Dispatcher.Close took %v", took)
	// Close returning at once would mean either that it did not wait for
	// Retain's close or that the connection was not stuck, and this test
	// no longer reproduces the blackhole.
	if took < time.Second {
		t.Errorf("Dispatcher.Close took %v, want it to wait for gRPC's close of the stuck connection (up to 5s)", took)
	}
	goleak.VerifyNone(t, before, goleak.IgnoreAnyFunction("github.com/moegrid/moegrid/model/kernel.worker"))
}
