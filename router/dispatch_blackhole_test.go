package router

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/moegrid/moegrid/internal/mtls"
	"github.com/moegrid/moegrid/internal/pki"
	"github.com/moegrid/moegrid/internal/pki/pkitest"
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
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn // protected by mu
}

func startBlackholeProxy(t *testing.T, target string) *blackholeProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackholeProxy{lis: lis, target: target, holed: make(chan struct{})}
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
		go p.pipe(out, in)
		go p.pipe(in, out)
	}
}

// pipe copies from src to dst until the blackhole, then waits, holding
// what it read, until the proxy is closed.
func (p *blackholeProxy) pipe(dst, src net.Conn) {
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
