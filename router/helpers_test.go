package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/moegrid/moegrid/internal/apikey"
	"github.com/moegrid/moegrid/internal/grpcerr"
	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/sample"
	"github.com/moegrid/moegrid/model/synth"
	"github.com/moegrid/moegrid/model/tokenizer"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// fx is the tiny synthetic model every test shares, loaded once by
// TestMain. It is read-only: a test that needs another configuration copies
// the model (see modelWith).
var fx struct {
	dir     string
	model   *model.Model
	experts *model.ExpertSet
	tok     *tokenizer.Tokenizer
}

func TestMain(m *testing.M) {
	if err := setupFixture(); err != nil {
		fmt.Fprintln(os.Stderr, "router tests: fixture:", err)
		os.Exit(1)
	}
	// The kernel's worker pool lives as long as the process, by design.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/moegrid/moegrid/model/kernel.worker"), goleak.Cleanup(func(code int) {
		fx.experts.Close()
		fx.model.Close()
		os.RemoveAll(fx.dir)
		os.Exit(code)
	}))
}

func setupFixture() error {
	dir, err := os.MkdirTemp("", "moegrid-router-test-")
	if err != nil {
		return err
	}
	fx.dir = dir
	tiny, err := synth.PresetByName("tiny")
	if err != nil {
		return err
	}
	if err := synth.Write(dir, synth.Options{Preset: tiny, Seed: 1, DType: safetensors.F32, Shards: 1}); err != nil {
		return err
	}
	if fx.model, err = model.Load(dir); err != nil {
		return err
	}
	if fx.experts, err = model.LoadExperts(dir, fx.model.Config, nil); err != nil {
		return err
	}
	fx.tok, err = tokenizer.Load(filepath.Join(dir, "tokenizer.json"))
	return err
}

// modelWith returns a shallow copy of the shared model (same read-only
// weights) with its configuration changed by edit. It must not be closed.
func modelWith(edit func(*model.Config)) *model.Model {
	m := *fx.model
	edit(&m.Config)
	return &m
}

// testContext is the test's context with a deadline well inside the
// package's time budget.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// reference generates greedily with the in-process model, one sequence
// alone: what every served greedy completion must equal.
func reference(t *testing.T, m *model.Model, prompt []int, maxTokens int, ignoreEOS bool) []int {
	t.Helper()
	out, err := m.Generate(testContext(t), fx.experts, prompt, maxTokens, ignoreEOS, sample.Greedy)
	if err != nil {
		t.Fatalf("model.Generate: %v", err)
	}
	return out
}

// greedy returns a greedy sampler.
func greedy() *sample.Sampler {
	s, err := sample.New(sample.Params{})
	if err != nil {
		panic(err) // zero params are valid
	}
	return s
}

// runScheduler runs s until the returned stop is called or the test ends;
// stop cancels Run, waits for it and returns its error. It may be called
// more than once.
func runScheduler(t *testing.T, s *Scheduler) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			err = <-done
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

// newScheduler returns a scheduler over m and experts with fresh metrics,
// not yet running.
func newScheduler(cfg SchedulerConfig, m *model.Model, experts model.Experts) (*Scheduler, *metrics) {
	met := newMetrics(prometheus.NewRegistry())
	return NewScheduler(cfg, m, experts, slog.New(slog.DiscardHandler), met, nil), met
}

// collect reads a sequence's events to the end: its tokens and the last
// event. A broken stream (no end event, events after it, the channel left
// open) is reported with t.Errorf, which unlike t.Fatal may be called from
// any goroutine, and returned as the end's error.
func collect(t *testing.T, ctx context.Context, events <-chan Event) ([]int, Event) {
	t.Helper()
	broken := func(format string, args ...any) ([]int, Event) {
		t.Helper()
		err := fmt.Errorf(format, args...)
		t.Errorf("events: %v", err)
		return nil, Event{Err: err}
	}
	var toks []int
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return broken("closed without an end event after %d tokens", len(toks))
			}
			if ev.Err != nil || ev.Finish != 0 {
				select {
				case extra, ok := <-events:
					if ok {
						return broken("event %+v after the end %+v", extra, ev)
					}
				case <-ctx.Done():
					return broken("not closed after the end: %v", ctx.Err())
				}
				return toks, ev
			}
			toks = append(toks, ev.Token)
		case <-ctx.Done():
			return broken("waiting after %d tokens: %v", len(toks), ctx.Err())
		}
	}
}

// nextToken waits for a sequence's next event and fails the test unless it
// is a token.
func nextToken(t *testing.T, ctx context.Context, events <-chan Event) int {
	t.Helper()
	select {
	case ev := <-events:
		if ev.Err != nil || ev.Finish != 0 {
			t.Fatalf("end %+v, want a token", ev)
		}
		return ev.Token
	case <-ctx.Done():
		t.Fatalf("waiting for a token: %v", ctx.Err())
	}
	return 0
}

// eventually polls cond every 10 ms until it returns nil or 10 s pass.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("%s: %v", what, t.Context().Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// idle waits until the scheduler's running and waiting gauges are both 0.
func idle(t *testing.T, met *metrics) {
	t.Helper()
	eventually(t, "scheduler idle", func() error {
		if r, w := gaugeValue(met.running), gaugeValue(met.waiting); r != 0 || w != 0 {
			return fmt.Errorf("running %v, waiting %v", r, w)
		}
		return nil
	})
}

// gaugeValue reads a gauge.
func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		panic(err)
	}
	return m.GetGauge().GetValue()
}

// faultyExperts wraps real experts and fails every Forward with err while
// failing is set. It counts the calls.
type faultyExperts struct {
	inner   model.Experts
	err     error
	failing atomic.Bool
	calls   atomic.Int64
}

func (f *faultyExperts) Forward(ctx context.Context, layer int, batches []model.ExpertBatch) error {
	f.calls.Add(1)
	if f.failing.Load() {
		return f.err
	}
	return f.inner.Forward(ctx, layer, batches)
}

// testRouter is a Router built by hand around the shared model, with its
// scheduler, a Generation gRPC server and the HTTP API, all on loopback.
type testRouter struct {
	r        *Router
	start    func() // starts the scheduler, once; call from the test goroutine
	started  bool
	stop     func() error // stops the scheduler
	client   moegridv1.GenerationClient
	httpURL  string
	grpcAddr string
}

type routerOptions struct {
	sched            SchedulerConfig
	model            *model.Model  // default fx.model
	experts          model.Experts // default fx.experts
	defaultMaxTokens int           // default 16
	maxExplainTokens int           // default DefaultMaxExplainTokens
	noRun            bool          // do not run the scheduler
	log              *slog.Logger  // default discards
	keys             *apikey.Guard // default none: no authentication
}

func newTestRouter(t *testing.T, o routerOptions) *testRouter {
	t.Helper()
	if o.sched == (SchedulerConfig{}) {
		o.sched = DefaultSchedulerConfig()
	}
	if o.model == nil {
		o.model = fx.model
	}
	if o.experts == nil {
		o.experts = fx.experts
	}
	if o.defaultMaxTokens == 0 {
		o.defaultMaxTokens = 16
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	r := &Router{
		cfg:     Config{ID: "router-test", ModelName: "tiny", DefaultMaxTokens: o.defaultMaxTokens, MaxExplainTokens: o.maxExplainTokens, Scheduler: o.sched},
		log:     o.log,
		model:   o.model,
		tok:     fx.tok,
		metrics: newMetrics(prometheus.NewRegistry()),
		seeds:   newSeedSource(),
		started: time.Now(),
		routed:  make([]atomic.Uint64, o.model.Config.NumLocalExperts),
	}
	r.keys = o.keys
	r.sched = NewScheduler(o.sched, o.model, o.experts, r.log, r.metrics, r.countRoutes)
	tr := &testRouter{r: r, stop: func() error { return nil }}
	tr.start = func() {
		if !tr.started {
			tr.started = true
			tr.stop = runScheduler(t, r.sched)
		}
	}
	if o.noRun {
		// A scheduler the test never started still answers what it
		// queued, so that no handler waits forever.
		t.Cleanup(func() {
			if !tr.started {
				r.sched.Run(t.Context()) // cancelled by now: Run answers and returns
			}
		})
	} else {
		tr.start()
	}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var unary []grpc.UnaryServerInterceptor
	var stream []grpc.StreamServerInterceptor
	if o.keys != nil {
		unary = append(unary, o.keys.UnaryServerInterceptor(grpcAPI))
		stream = append(stream, o.keys.StreamServerInterceptor(grpcAPI))
	}
	stream = append(stream, grpcerr.New(errorCodes, r.log).Stream())
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...))
	moegridv1.RegisterGenerationServer(srv, &generationService{r: r})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("grpc Serve: %v", err)
		}
	})
	tr.grpcAddr = lis.Addr().String()

	mux := http.NewServeMux()
	r.httpHandler(mux)
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	tr.httpURL = hs.URL

	conn, err := grpc.NewClient(tr.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	tr.client = moegridv1.NewGenerationClient(conn)
	return tr
}
