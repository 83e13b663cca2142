package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"golang.org/x/sync/errgroup"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/sample"
	"github.com/moegrid/moegrid/router"
)

// ErrInvalid is wrapped by the errors about a request Local refuses before
// it reaches the scheduler.
var ErrInvalid = errors.New("bench: invalid request")

// Local is a Generator without a network: the router's scheduler, with its
// continuous batching, over a model whose experts are all in this process.
// Measured against a cluster with the same Config, it shows what the
// expert hops cost.
type Local struct {
	model   *model.Model
	experts *model.ExpertSet
	sched   *router.Scheduler
}

var _ Generator = (*Local)(nil)

// OpenLocal maps the checkpoint in dir with every expert and builds a
// scheduler over it with cfg. Run drives the scheduler; Close unmaps the
// model.
func OpenLocal(dir string, cfg router.SchedulerConfig, log *slog.Logger) (*Local, error) {
	if cfg.MaxBatchTokens < 1 || cfg.PrefillChunk < 1 || cfg.MaxRunning < 1 || cfg.MaxWaiting < 1 {
		return nil, fmt.Errorf("bench: scheduler limits must be at least 1: %+v", cfg)
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
	return &Local{model: m, experts: ex, sched: router.NewScheduler(cfg, m, ex, log, nil, nil)}, nil
}

// Run steps the scheduler until ctx is done; requests still held then fail
// with router.ErrStopped.
func (l *Local) Run(ctx context.Context) error { return l.sched.Run(ctx) }

// Close unmaps the model. Run must have returned.
func (l *Local) Close() error {
	return errors.Join(l.experts.Close(), l.model.Close())
}

// Generate submits a greedy request to the scheduler and streams its tokens.
// It checks the prompt as the router does, so that a bad request fails
// alone instead of the scheduler step it would have joined.
func (l *Local) Generate(ctx context.Context, prompt []int, maxTokens int, tokens func(ids []int)) error {
	cfg := &l.model.Config
	for i, id := range prompt {
		if id < 0 || id >= cfg.VocabSize {
			return fmt.Errorf("%w: prompt[%d]: token id %d outside the vocabulary [0, %d)", ErrInvalid, i, id, cfg.VocabSize)
		}
	}
	if room := cfg.MaxPositionEmbeddings - len(prompt); len(prompt) == 0 || maxTokens < 1 || maxTokens > room {
		return fmt.Errorf("%w: a %d-token prompt and %d tokens do not fit the model's context of %d", ErrInvalid, len(prompt), maxTokens, cfg.MaxPositionEmbeddings)
	}
	greedy, err := sample.New(sample.Params{})
	if err != nil {
		return err
	}
	events, err := l.sched.Submit(ctx, router.Request{Prompt: prompt, MaxTokens: maxTokens, IgnoreEOS: true, Sampler: greedy})
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

// RunInProcess runs the load of cfg on Local over the checkpoint in dir: the
// same requests and report as a run against a cluster.
func RunInProcess(ctx context.Context, dir string, sched router.SchedulerConfig, cfg Config, log *slog.Logger) (Result, error) {
	if err := cfg.validate(); err != nil {
		return Result{}, err
	}
	l, err := OpenLocal(dir, sched, log)
	if err != nil {
		return Result{}, err
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var res Result
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return l.Run(gctx) })
	g.Go(func() error {
		defer cancel()
		var err error
		res, err = RunWith(gctx, l, cfg)
		return err
	})
	return res, g.Wait()
}
