package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/sample"
	"github.com/moegrid/moegrid/router"
)

// ErrInvalid is wrapped by the errors about a request the in-process
// generator refuses before it reaches the scheduler.
var ErrInvalid = errors.New("bench: invalid request")

// Local runs loads without a network: the router's scheduler, with its
// continuous batching, over a model whose experts are all in this process.
// Measured against a cluster with the same Config, it shows what the
// expert hops cost.
type Local struct {
	model   *model.Model
	experts *model.ExpertSet
	sched   router.SchedulerConfig
	log     *slog.Logger
}

// OpenLocal maps the checkpoint in dir with every expert; its runs use
// schedulers configured by sched. A nil log discards.
func OpenLocal(dir string, sched router.SchedulerConfig, log *slog.Logger) (*Local, error) {
	if err := sched.Validate(); err != nil {
		return nil, err
	}
	m, err := model.Load(dir)
	if err != nil {
		return nil, err
	}
	ex, err := model.LoadExperts(dir, m.Config, nil)
	if err != nil {
		m.Close()
		return nil, err
	}
	return &Local{model: m, experts: ex, sched: sched, log: log}, nil
}

// Close unmaps the model. No run may be in progress.
func (l *Local) Close() error {
	return errors.Join(l.experts.Close(), l.model.Close())
}

// Run runs the load of cfg: the same requests and report as RunWith against
// a cluster. Each phase (warm-up, measured) has a scheduler of its own that
// starts once the first Concurrency requests are queued, so that they begin
// in one step as the sequences of llama.cpp's batched bench do; a router
// serving a cluster instead admits requests as they arrive.
func (l *Local) Run(ctx context.Context, cfg Config) (Result, error) {
	return run(ctx, cfg, func(ctx context.Context, prompts [][]int) ([]record, float64, error) {
		g := l.generator(min(cfg.Concurrency, len(prompts)))
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- g.run(ctx) }()
		records, elapsed := load(ctx, g, prompts, cfg)
		cancel()
		return records, elapsed, <-done
	})
}

// RunInProcess opens the checkpoint in dir, runs the load of cfg on it and
// closes it.
func RunInProcess(ctx context.Context, dir string, sched router.SchedulerConfig, cfg Config, log *slog.Logger) (Result, error) {
	if err := cfg.validate(); err != nil {
		return Result{}, err
	}
	l, err := OpenLocal(dir, sched, log)
	if err != nil {
		return Result{}, err
	}
	defer l.Close()
	return l.Run(ctx, cfg)
}

// generator submits to one scheduler; full is closed once wave requests
// have been submitted.
type generator struct {
	sched *router.Scheduler
	cfg   *model.Config
	wave  int
	full  chan struct{}

	mu        sync.Mutex
	submitted int // protected by mu
}

var _ Generator = (*generator)(nil)

// generator returns a Generator over a new scheduler, which the caller runs.
func (l *Local) generator(wave int) *generator {
	return &generator{
		sched: router.NewScheduler(l.sched, l.model, l.experts, l.log, nil, nil),
		cfg:   &l.model.Config,
		wave:  wave,
		full:  make(chan struct{}),
	}
}

// run waits for the wave, then steps the scheduler until ctx is done.
func (g *generator) run(ctx context.Context) error {
	select {
	case <-g.full:
	case <-ctx.Done():
	}
	// Run returns at once when ctx is done, failing what was queued.
	return g.sched.Run(ctx)
}

// Generate submits a greedy request to the scheduler and streams its
// tokens.
func (g *generator) Generate(ctx context.Context, prompt []int, maxTokens int, tokens func(ids []int)) error {
	events, err := g.submit(ctx, prompt, maxTokens)
	g.mu.Lock()
	// A refused request counts too: the wave must start without it.
	if g.submitted++; g.submitted == g.wave {
		close(g.full)
	}
	g.mu.Unlock()
	if err != nil {
		return err
	}
	for {
		select {
		case ev, ok := <-events:
			switch {
			case !ok:
				return errors.New("bench: the scheduler closed a stream without its end")
			case ev.Err != nil:
				return ev.Err
			case ev.Finish != 0:
				return nil
			}
			tokens([]int{ev.Token})
		case <-ctx.Done():
			// The scheduler drops the sequence at its next step; its events
			// channel holds every event, so it never blocks on this one.
			return ctx.Err()
		}
	}
}

// submit checks a request as the router does, so that a bad one fails alone
// instead of the scheduler step it would have joined, and queues it.
func (g *generator) submit(ctx context.Context, prompt []int, maxTokens int) (<-chan router.Event, error) {
	for i, id := range prompt {
		if id < 0 || id >= g.cfg.VocabSize {
			return nil, fmt.Errorf("%w: prompt[%d]: token id %d outside the vocabulary [0, %d)", ErrInvalid, i, id, g.cfg.VocabSize)
		}
	}
	if room := g.cfg.MaxPositionEmbeddings - len(prompt); len(prompt) == 0 || maxTokens < 1 || maxTokens > room {
		return nil, fmt.Errorf("%w: a %d-token prompt and %d tokens do not fit the model's context of %d", ErrInvalid, len(prompt), maxTokens, g.cfg.MaxPositionEmbeddings)
	}
	greedy, err := sample.New(sample.Params{})
	if err != nil {
		return nil, err
	}
	return g.sched.Submit(ctx, router.Request{Prompt: prompt, MaxTokens: maxTokens, IgnoreEOS: true, Sampler: greedy})
}
