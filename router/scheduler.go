package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/sample"
)

// ErrQueueFull is returned by Submit when the router already has as many
// requests waiting as it accepts.
var ErrQueueFull = errors.New("router: request queue full")

// ErrStopped is returned for requests the scheduler holds when it stops.
var ErrStopped = errors.New("router: scheduler stopped")

// FinishReason says why a sequence ended.
type FinishReason int

const (
	// FinishStop: the end-of-sequence token.
	FinishStop FinishReason = iota + 1
	// FinishLength: max tokens or the model's context.
	FinishLength
)

// SchedulerConfig bounds the scheduler's batches and queues.
type SchedulerConfig struct {
	// MaxBatchTokens is the number of tokens one step computes, decode and
	// prefill together.
	MaxBatchTokens int
	// PrefillChunk is the most prompt tokens of one sequence in one step;
	// longer prompts are prefilled over several steps so that running
	// sequences keep decoding.
	PrefillChunk int
	// MaxRunning is the number of sequences decoding at once.
	MaxRunning int
	// MaxWaiting is the number of requests queued for a place.
	MaxWaiting int
}

// DefaultSchedulerConfig returns the local defaults.
func DefaultSchedulerConfig() SchedulerConfig {
	return SchedulerConfig{MaxBatchTokens: 512, PrefillChunk: 256, MaxRunning: 64, MaxWaiting: 256}
}

// Request is one sequence to generate.
type Request struct {
	Prompt    []int
	MaxTokens int
	IgnoreEOS bool
	Sampler   *sample.Sampler
	// Logprobs 0 asks for no log-probabilities; n in [1, MaxLogprobs] for
	// each generated token's log-probability and the n most likely tokens
	// at its position.
	Logprobs int
	// PromptLogprobs asks for the log-probability of every prompt token
	// (with Logprobs alternatives each), as the OpenAI API's echo reports
	// them. It costs the logits of every prompt position.
	PromptLogprobs bool
}

// Event is one message of a sequence's stream: a token, or the end (Finish
// set, or Err).
type Event struct {
	Token int
	// Logprob is the token's log-probability when the request asked for
	// Logprobs or PromptLogprobs.
	Logprob *TokenLogprob
	// PromptLogprobs, on the first token's event of a request that asked
	// for them, has one entry per prompt token in order. The first prompt
	// token has nothing before it to predict it: its entry has only Token
	// set.
	PromptLogprobs []TokenLogprob
	Finish         FinishReason
	Err            error
}

// sequence is a request being served; owned by the scheduler goroutine.
type sequence struct {
	ctx       context.Context
	req       Request
	cache     *model.Cache
	prefilled int // prompt tokens in the cache
	generated int
	last      int // last sampled token, the next step's input
	events    chan Event
	// promptLogprobs gathers the prompt's log-probabilities chunk by chunk
	// until the first token's event carries them.
	promptLogprobs []TokenLogprob
}

// Scheduler runs continuous batching: every step computes one token of each
// running sequence plus chunks of the prompts being prefilled, so new
// requests join without waiting for others to finish.
type Scheduler struct {
	cfg      SchedulerConfig
	model    *model.Model
	experts  model.Experts
	log      *slog.Logger
	onRoutes func([][]model.Route)
	metrics  *metrics

	submit chan *sequence
	// mu serialises Submit against the end of Run, so that no request is
	// queued after Run has answered the last ones, and against Run's moves
	// of requests from submit to its waiting list, so that both count
	// against MaxWaiting.
	mu      sync.Mutex
	closed  bool // protected by mu
	waiting int  // protected by mu; requests Run took from submit and has not admitted
}

// NewScheduler returns a scheduler; Run drives it. onRoutes, if not nil, is
// called from the scheduler goroutine with every step's routes. A nil log
// discards; nil metrics are kept unregistered.
func NewScheduler(cfg SchedulerConfig, m *model.Model, experts model.Experts, log *slog.Logger, met *metrics, onRoutes func([][]model.Route)) *Scheduler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if met == nil {
		met = newMetrics(nil)
	}
	return &Scheduler{
		cfg:      cfg,
		model:    m,
		experts:  experts,
		log:      log,
		onRoutes: onRoutes,
		metrics:  met,
		submit:   make(chan *sequence, cfg.MaxWaiting),
	}
}

// Submit queues a request. Its events arrive on the returned channel, which
// is closed after the last one. Cancelling ctx ends the sequence and frees
// its cache at the next step boundary.
func (s *Scheduler) Submit(ctx context.Context, req Request) (<-chan Event, error) {
	if req.Logprobs < 0 || req.Logprobs > MaxLogprobs {
		return nil, fmt.Errorf("%w: logprobs %d must be in [0, %d]", ErrInvalid, req.Logprobs, MaxLogprobs)
	}
	seq := &sequence{ctx: ctx, req: req, events: make(chan Event, req.MaxTokens+1)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrStopped
	}
	if len(s.submit)+s.waiting >= s.cfg.MaxWaiting {
		return nil, fmt.Errorf("%w: %d requests waiting", ErrQueueFull, s.cfg.MaxWaiting)
	}
	select {
	case s.submit <- seq:
		return seq.events, nil
	default:
		return nil, fmt.Errorf("%w: %d requests waiting", ErrQueueFull, cap(s.submit))
	}
}

// Run serves requests until ctx is cancelled; requests still held then end
// with ErrStopped.
func (s *Scheduler) Run(ctx context.Context) error {
	var waiting, running []*sequence
	defer func() {
		for _, q := range append(waiting, running...) {
			s.end(q, Event{Err: ErrStopped})
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.closed = true
		for {
			select {
			case q := <-s.submit:
				s.end(q, Event{Err: ErrStopped})
			default:
				return
			}
		}
	}()
	for {
		if len(waiting) == 0 && len(running) == 0 {
			select {
			case q := <-s.submit:
				waiting = append(waiting, q)
			case <-ctx.Done():
				return nil
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		s.mu.Lock()
	drain:
		for {
			select {
			case q := <-s.submit:
				waiting = append(waiting, q)
			default:
				break drain
			}
		}
		waiting = s.dropCancelled(waiting)
		running = s.dropCancelled(running)
		for len(waiting) > 0 && len(running) < s.cfg.MaxRunning {
			q := waiting[0]
			waiting = waiting[1:]
			q.cache = s.model.NewCache()
			running = append(running, q)
		}
		s.waiting = len(waiting)
		s.mu.Unlock()
		s.metrics.running.Set(float64(len(running)))
		s.metrics.waiting.Set(float64(len(waiting)))
		if len(running) == 0 {
			continue
		}
		running = s.step(ctx, running)
		s.metrics.running.Set(float64(len(running)))
	}
}

// dropCancelled ends the sequences whose clients have gone, releasing their
// caches.
func (s *Scheduler) dropCancelled(seqs []*sequence) []*sequence {
	kept := seqs[:0]
	for _, q := range seqs {
		if err := q.ctx.Err(); err != nil {
			s.end(q, Event{Err: err})
			continue
		}
		kept = append(kept, q)
	}
	clear(seqs[len(kept):])
	return kept
}

func (s *Scheduler) end(q *sequence, ev Event) {
	q.cache = nil
	q.events <- ev
	close(q.events)
}

// step computes one batch: a token for every decoding sequence, then prompt
// chunks within the token budget. It returns the sequences still running.
func (s *Scheduler) step(ctx context.Context, running []*sequence) []*sequence {
	budget := s.cfg.MaxBatchTokens
	var inputs []model.Input
	var members []*sequence
	for _, q := range running {
		if q.prefilled == len(q.req.Prompt) && budget > 0 {
			inputs = append(inputs, model.Input{Cache: q.cache, Tokens: []int{q.last}})
			members = append(members, q)
			budget--
		}
	}
	for _, q := range running {
		if rest := len(q.req.Prompt) - q.prefilled; rest > 0 && budget > 0 {
			n := min(rest, s.cfg.PrefillChunk, budget)
			inputs = append(inputs, model.Input{Cache: q.cache, Tokens: q.req.Prompt[q.prefilled : q.prefilled+n], AllLogits: q.req.PromptLogprobs})
			members = append(members, q)
			budget -= n
		}
	}
	res, err := s.model.Forward(ctx, s.experts, inputs)
	if err != nil {
		if ctx.Err() != nil {
			return running
		}
		// The step's sequences cannot continue without their experts; the
		// others (none, unless the budget left some out) carry on.
		s.log.Warn("step failed", "sequences", len(members), "err", err)
		failed := map[*sequence]bool{}
		for _, q := range members {
			failed[q] = true
			s.end(q, Event{Err: err})
		}
		kept := running[:0]
		for _, q := range running {
			if !failed[q] {
				kept = append(kept, q)
			}
		}
		return kept
	}
	if s.onRoutes != nil {
		s.onRoutes(res.Routes)
	}
	s.metrics.stepTokens.Observe(float64(s.cfg.MaxBatchTokens - budget))
	done := map[*sequence]bool{}
	for i, q := range members {
		logits := res.Logits[i]
		if q.prefilled < len(q.req.Prompt) {
			n := len(inputs[i].Tokens)
			if q.req.PromptLogprobs {
				q.gatherPromptLogprobs(logits, n, s.model.Config.VocabSize)
			}
			q.prefilled += n
			if q.prefilled < len(q.req.Prompt) {
				continue
			}
			if q.req.PromptLogprobs {
				logits = logits[(n-1)*s.model.Config.VocabSize:]
			}
		}
		tok := q.req.Sampler.Next(logits)
		q.last = tok
		q.generated++
		s.metrics.tokens.Inc()
		ev := Event{Token: tok}
		if q.req.Logprobs > 0 || q.req.PromptLogprobs {
			lp := logprobOf(logits, tok, q.req.Logprobs)
			ev.Logprob = &lp
		}
		if q.req.PromptLogprobs && q.generated == 1 {
			ev.PromptLogprobs, q.promptLogprobs = q.promptLogprobs, nil
		}
		q.events <- ev
		switch {
		case tok == s.model.Config.EOSTokenID && !q.req.IgnoreEOS:
			s.end(q, Event{Finish: FinishStop})
			done[q] = true
		// The sequence, prompt and last token included, may fill the context
		// but not pass it: the last token is returned, never fed back.
		case q.generated >= q.req.MaxTokens || q.cache.Len()+1 >= s.model.Config.MaxPositionEmbeddings:
			s.end(q, Event{Finish: FinishLength})
			done[q] = true
		}
	}
	kept := running[:0]
	for _, q := range running {
		if !done[q] {
			kept = append(kept, q)
		}
	}
	return kept
}

// gatherPromptLogprobs adds the log-probabilities that a prefill chunk's
// logits [n, vocab] give: the logits after prompt position p predict the
// token at p+1, and those after the last prompt token the first generated
// one, which the caller samples.
func (q *sequence) gatherPromptLogprobs(logits []float32, n, vocab int) {
	if q.prefilled == 0 {
		q.promptLogprobs = append(q.promptLogprobs, TokenLogprob{Token: q.req.Prompt[0]})
	}
	for r := range n {
		next := q.prefilled + r + 1
		if next == len(q.req.Prompt) {
			break
		}
		q.promptLogprobs = append(q.promptLogprobs, logprobOf(logits[r*vocab:(r+1)*vocab], q.req.Prompt[next], q.req.Logprobs))
	}
}
