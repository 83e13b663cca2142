package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

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

// SchedulerConfig bounds the scheduler's batches, queues and memory.
type SchedulerConfig struct {
	// MaxBatchTokens is the number of tokens one step computes, decode and
	// prefill together.
	MaxBatchTokens int
	// PrefillChunk is the most prompt tokens of one sequence in one step;
	// longer prompts are prefilled over several steps so that running
	// sequences keep decoding.
	PrefillChunk int
	// PrefillShare bounds the work a step spends on prompts while other
	// sequences decode, as a multiple of the work of the step's decoding
	// rows (see Scheduler). 1 lets prompts at most double a step's
	// compute; more prefills faster at the decoding streams' expense.
	// 0 means 1.
	PrefillShare float64
	// StepBaseRows is what the work count takes a step to cost before
	// its rows, in rows of weight multiply-adds: reading every weight
	// once, which a small batch spends most of its time on, costs about as
	// much as computing that many rows. It is part of the decoding work
	// the prefill share is taken of, so that a few decoding streams still
	// let a burst of short prompts in within a few steps. 0 means
	// DefaultStepBaseRows.
	StepBaseRows float64
	// AttentionPrice is what the scheduler's work count takes one
	// multiply-add of attention over the context to cost, in multiply-adds
	// of the weights' matrix products: attention runs as short dot
	// products per cached position, which are slower than the tiled
	// matmuls. 0 means DefaultAttentionPrice.
	AttentionPrice float64
	// MaxPromptTokens is the longest prompt accepted; 0 means the model's
	// context.
	MaxPromptTokens int
	// KVCacheBytes is the key/value cache memory the running sequences may
	// reserve together; 0 means DefaultKVCacheBytes.
	KVCacheBytes int64
	// MaxRunning is the number of sequences decoding at once.
	MaxRunning int
	// MaxWaiting is the number of requests queued for a place.
	MaxWaiting int
}

// DefaultAttentionPrice is the AttentionPrice measured with this code's CPU
// kernels (AVX2, the tiny model, four streams beside a 4000-token prompt):
// there an attention multiply-add, one short dot product per cached
// position and head, takes about as long as four of the tiled matmuls'.
const DefaultAttentionPrice = 4

// DefaultStepBaseRows is the StepBaseRows measured on the small preset in
// BF16 on a 2-core machine: a one-stream decode step took as long as about
// 16 rows of a batched one cost on top of it.
const DefaultStepBaseRows = 16

// DefaultSchedulerConfig returns the local defaults.
func DefaultSchedulerConfig() SchedulerConfig {
	return SchedulerConfig{MaxBatchTokens: 512, PrefillChunk: 256, PrefillShare: 1, StepBaseRows: DefaultStepBaseRows, AttentionPrice: DefaultAttentionPrice, MaxRunning: 64, MaxWaiting: 256}
}

// Validate reports the first field out of range, naming it.
func (c SchedulerConfig) Validate() error {
	switch {
	case c.MaxBatchTokens < 1 || c.PrefillChunk < 1 || c.MaxRunning < 1 || c.MaxWaiting < 1:
		return fmt.Errorf("router: scheduler limits must be at least 1: %+v", c)
	case math.IsNaN(c.PrefillShare) || math.IsInf(c.PrefillShare, 0) || c.PrefillShare < 0:
		return fmt.Errorf("router: prefill share %v must be a positive number (0: the default 1)", c.PrefillShare)
	case math.IsNaN(c.StepBaseRows) || math.IsInf(c.StepBaseRows, 0) || c.StepBaseRows < 0:
		return fmt.Errorf("router: step base rows %v must be a positive number (0: the default %v)", c.StepBaseRows, DefaultStepBaseRows)
	case math.IsNaN(c.AttentionPrice) || math.IsInf(c.AttentionPrice, 0) || c.AttentionPrice < 0:
		return fmt.Errorf("router: attention price %v must be a positive number (0: the default %v)", c.AttentionPrice, DefaultAttentionPrice)
	case c.MaxPromptTokens < 0:
		return fmt.Errorf("router: max prompt tokens %d must not be negative (0: the model's context)", c.MaxPromptTokens)
	case c.KVCacheBytes < 0:
		return fmt.Errorf("router: KV cache bytes %d must not be negative (0: the default)", c.KVCacheBytes)
	}
	return nil
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
	// Explain asks for the routes behind every token (Event.Routes and
	// Event.PromptRoutes).
	Explain bool
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
	// Routes, when the request asked to explain, is per layer the route of
	// the position the token was sampled from: the last prompt token for
	// the first token, then the token before.
	Routes []model.Route
	// PromptRoutes, on the first token's event of a request that asked to
	// explain, is per prompt token, in order, the routes of its position
	// (per layer).
	PromptRoutes [][]model.Route
	Finish       FinishReason
	Err          error
}

// sequence is a request being served; owned by the scheduler goroutine.
type sequence struct {
	ctx       context.Context
	req       Request
	cache     *model.Cache
	reserve   int64 // KV cache bytes the sequence holds once admitted
	prefilled int   // prompt tokens in the cache
	generated int
	last      int // last sampled token, the next step's input
	events    chan Event
	// submitted, admitted and lastToken time the request for the latency
	// metrics.
	submitted, admitted, lastToken time.Time
	// promptLogprobs gathers the prompt's log-probabilities chunk by chunk
	// until the first token's event carries them.
	promptLogprobs []TokenLogprob
	// promptRoutes gathers the prompt's routes likewise.
	promptRoutes [][]model.Route
	// credit is the prefill work the sequence banked, as the oldest
	// prompt, on steps where one layer of its next token cost more than
	// the step had left (see Scheduler).
	credit float64
	// partial holds the prompt chunk a step stopped between layers; the
	// next steps continue it before anything else of the prompt.
	partial *model.Partial
	// pieceRoutes gathers the routes of the chunk being prefilled, [token]
	// [layer], over the steps it takes.
	pieceRoutes [][]model.Route
}

// Scheduler runs continuous batching: every step computes one token of each
// running sequence plus chunks of the prompts being prefilled, so new
// requests join without waiting for others to finish.
//
// Fairness: a step costs what its rows cost, and a prompt token's cost grows
// with the context it attends to (a chunk of n tokens after c cached ones
// attends to n·c + n(n+1)/2 positions in every layer). The scheduler prices
// a step's work from the model's shapes: multiply-adds of the weights
// (attention projections, gate, the chosen experts; lm_head for rows with
// logits) plus AttentionPrice times those of attention (q·k and the
// weighted v over every attended position). Its rule:
//
//   - every sequence that is decoding gets one token every step (within
//     MaxBatchTokens);
//   - prompts are prefilled in admission order in what the step has left:
//     at most PrefillChunk tokens each, MaxBatchTokens in all, and, while
//     any sequence decodes, work of at most PrefillShare times that of the
//     decoding part of the step (its rows plus StepBaseRows rows for
//     reading the weights); a long-context chunk shrinks until it fits;
//   - where one whole token costs more than the step has left (a long
//     context beside few streams: on the tiny preset at 29k positions one
//     token's attention outweighs four streams' step), the step carries
//     one token through as many layers as fit (model.Input.Layers), and
//     the next steps continue it from there (a layer's work is the
//     token's over the number of layers);
//   - where not one layer of it fits, the oldest prompt advances by none
//     and banks what the step leaves of its share (after the younger
//     prompts, which may take what it cannot), and takes the layer on the
//     step where its bank covers what the layer costs beyond that step's
//     share. So every prompt progresses, and at its share on average: a
//     step that carries such a layer costs more than its bound, but only
//     about one step in (layer cost / share) does, and the others carry
//     none of it;
//   - with nothing decoding no one waits on the step, and prompts take the
//     token limits alone.
//
// So a prompt arriving at most doubles (by default) the work of the steps
// that carry the running streams' tokens, whatever its length, on average
// over the steps and on every step where one of its tokens fits the share;
// a long prompt spreads over as many steps as that takes.
//
// Admission: a request reserves the KV cache bytes of its prompt and
// max_tokens (model.Config: layers × 2 × kv_dim × 4 bytes a token) when it
// is admitted, and is admitted in arrival order while the reservations fit
// in KVCacheBytes and fewer than MaxRunning sequences run; the others wait,
// up to MaxWaiting. A sequence's bytes return when it ends, is cancelled or
// fails.
type Scheduler struct {
	cfg      SchedulerConfig
	model    *model.Model
	experts  model.Experts
	log      *slog.Logger
	onRoutes func([][]model.Route)
	metrics  *metrics
	cost     workModel
	// kvPerToken is the KV cache bytes of one token, kvBudget the bytes all
	// running sequences may reserve; reserved (owned by Run) what they do.
	kvPerToken, kvBudget, reserved int64
	// onStep, if not nil, observes every computed step from the scheduler
	// goroutine.
	onStep func(stepWork)

	submit chan *sequence
	// mu serialises Submit against the end of Run, so that no request is
	// queued after Run has answered the last ones, and against Run's moves
	// of requests from submit to its waiting list, so that both count
	// against MaxWaiting.
	mu      sync.Mutex
	closed  bool // protected by mu
	waiting int  // protected by mu; requests Run took from submit and has not admitted
}

// stepWork is what one step computed, priced by workModel.
type stepWork struct {
	decoding      int     // sequences given a token
	decodeWork    float64 // of the decoding rows
	prefillTokens int
	prefillWork   float64 // of the prompt chunks
	prefillBudget float64 // the bound on prefillWork; +Inf with nothing decoding
	banked        float64 // what the oldest prompt added to its credit, given nothing: what the step left
	spent         float64 // what it took from its credit for one layer of a token past prefillBudget
	pieceLayers   int     // layers run by prompt tokens of chunks that stop or resume between layers, summed over tokens
	attention     int64   // attended positions per layer, every row
	reserved      int64   // KV cache bytes reserved by the running sequences
}

// NewScheduler returns a scheduler; Run drives it. onRoutes, if not nil, is
// called from the scheduler goroutine with every step's routes. A nil log
// discards; nil metrics are kept unregistered. Zero fields of cfg take
// their defaults (see SchedulerConfig).
func NewScheduler(cfg SchedulerConfig, m *model.Model, experts model.Experts, log *slog.Logger, met *metrics, onRoutes func([][]model.Route)) *Scheduler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if met == nil {
		met = newMetrics(nil)
	}
	if cfg.PrefillShare == 0 {
		cfg.PrefillShare = 1
	}
	if cfg.StepBaseRows == 0 {
		cfg.StepBaseRows = DefaultStepBaseRows
	}
	if cfg.AttentionPrice == 0 {
		cfg.AttentionPrice = DefaultAttentionPrice
	}
	if cfg.MaxPromptTokens == 0 {
		cfg.MaxPromptTokens = m.Config.MaxPositionEmbeddings
	}
	if cfg.KVCacheBytes == 0 {
		cfg.KVCacheBytes = DefaultKVCacheBytes()
	}
	met.kvBudget.Set(float64(cfg.KVCacheBytes))
	return &Scheduler{
		cfg:        cfg,
		model:      m,
		experts:    experts,
		log:        log,
		onRoutes:   onRoutes,
		metrics:    met,
		cost:       newWorkModel(&m.Config, cfg.AttentionPrice),
		kvPerToken: kvBytesPerToken(&m.Config),
		kvBudget:   cfg.KVCacheBytes,
		submit:     make(chan *sequence, cfg.MaxWaiting),
	}
}

// kvBytesPerToken is the KV cache memory of one token: a float32 key and
// value of kv_dim for every layer.
func kvBytesPerToken(c *model.Config) int64 {
	return int64(c.NumHiddenLayers) * 2 * int64(c.KVDim()) * 4
}

// kvReserve is the KV cache bytes a request reserves: its prompt and
// max_tokens, at most the model's context.
func (s *Scheduler) kvReserve(promptTokens, maxTokens int) int64 {
	n := min(int64(promptTokens)+int64(max(maxTokens, 0)), int64(s.model.Config.MaxPositionEmbeddings))
	return n * s.kvPerToken
}

// checkSize reports, wrapping ErrInvalid, a request that could never be
// served: a prompt past MaxPromptTokens, or one whose KV cache reservation
// exceeds the whole budget. Field names are the APIs'.
func (s *Scheduler) checkSize(promptTokens, maxTokens int) error {
	if promptTokens > s.cfg.MaxPromptTokens {
		return fmt.Errorf("%w: prompt: %d tokens, at most %d (max prompt tokens)", ErrInvalid, promptTokens, s.cfg.MaxPromptTokens)
	}
	if need := s.kvReserve(promptTokens, maxTokens); need > s.kvBudget {
		return fmt.Errorf("%w: max_tokens: the %d-token prompt and %d tokens need %d bytes of KV cache, more than the router's whole budget of %d",
			ErrInvalid, promptTokens, maxTokens, need, s.kvBudget)
	}
	return nil
}

// Submit queues a request. Its events arrive on the returned channel, which
// is closed after the last one. Cancelling ctx ends the sequence and frees
// its cache at the next step boundary. Errors: ErrInvalid for a request that
// could never be served (no prompt, max_tokens under 1, logprobs out of range, a prompt past
// MaxPromptTokens, a KV reservation past the whole budget), ErrQueueFull,
// ErrStopped.
func (s *Scheduler) Submit(ctx context.Context, req Request) (<-chan Event, error) {
	switch {
	case len(req.Prompt) == 0:
		return nil, fmt.Errorf("%w: prompt: no tokens", ErrInvalid)
	case req.MaxTokens < 1:
		return nil, fmt.Errorf("%w: max_tokens %d must be at least 1", ErrInvalid, req.MaxTokens)
	case req.Logprobs < 0 || req.Logprobs > MaxLogprobs:
		return nil, fmt.Errorf("%w: logprobs %d must be in [0, %d]", ErrInvalid, req.Logprobs, MaxLogprobs)
	}
	if err := s.checkSize(len(req.Prompt), req.MaxTokens); err != nil {
		return nil, err
	}
	seq := &sequence{
		ctx: ctx, req: req, events: make(chan Event, req.MaxTokens+1),
		reserve: s.kvReserve(len(req.Prompt), req.MaxTokens), submitted: time.Now(),
	}
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
		// In arrival order: a large request at the head waits for room
		// rather than being overtaken for ever by smaller ones.
		for len(waiting) > 0 && len(running) < s.cfg.MaxRunning && s.reserved+waiting[0].reserve <= s.kvBudget {
			q := waiting[0]
			waiting = waiting[1:]
			q.cache = s.model.NewCache()
			s.reserved += q.reserve
			q.admitted = time.Now()
			s.metrics.queueTime.Observe(q.admitted.Sub(q.submitted).Seconds())
			running = append(running, q)
		}
		s.waiting = len(waiting)
		s.mu.Unlock()
		s.metrics.running.Set(float64(len(running)))
		s.metrics.waiting.Set(float64(len(waiting)))
		s.metrics.kvUsed.Set(float64(s.reserved))
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

// end sends a sequence's last event and returns its KV cache bytes.
func (s *Scheduler) end(q *sequence, ev Event) {
	if q.cache != nil {
		q.cache = nil
		s.reserved -= q.reserve
		s.metrics.kvUsed.Set(float64(s.reserved))
	}
	s.metrics.duration.Observe(time.Since(q.submitted).Seconds())
	q.events <- ev
	close(q.events)
}

// step computes one batch: a token for every decoding sequence, then prompt
// chunks within the step's budgets (see Scheduler). It returns the sequences
// still running.
func (s *Scheduler) step(ctx context.Context, running []*sequence) []*sequence {
	rows := s.cfg.MaxBatchTokens
	var inputs []model.Input
	var members []*sequence
	var w stepWork
	for _, q := range running {
		if q.prefilled == len(q.req.Prompt) && rows > 0 {
			inputs = append(inputs, model.Input{Cache: q.cache, Tokens: []int{q.last}})
			members = append(members, q)
			rows--
			w.decoding++
			w.decodeWork += s.cost.work(q.cache.Len(), 1, 1)
			w.attention += s.cost.attended(q.cache.Len(), 1)
		}
	}
	w.prefillBudget = math.Inf(1)
	if w.decoding > 0 {
		w.decodeWork += s.cfg.StepBaseRows * s.cost.row
		w.prefillBudget = s.cfg.PrefillShare * w.decodeWork
	}
	oldest := true
	var banker *sequence // the oldest prompt, where it takes nothing and banks
	for _, q := range running {
		rest := len(q.req.Prompt) - q.prefilled
		if rest <= 0 || rows <= 0 {
			continue
		}
		in, n, bank := s.promptPiece(q, rest, rows, oldest, &w)
		oldest = false
		if bank {
			banker = q
		}
		if n == 0 {
			continue
		}
		inputs = append(inputs, in)
		members = append(members, q)
		rows -= n
	}
	// It banks what the younger prompts left of the share, not what it
	// saw, which they may have taken.
	if banker != nil {
		w.banked = w.prefillBudget - w.prefillWork
		banker.credit += w.banked
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
	s.metrics.countRoutes(res.Routes)
	s.metrics.stepTokens.Observe(float64(s.cfg.MaxBatchTokens - rows))
	s.metrics.promptTokens.Add(float64(w.prefillTokens))
	if s.onStep != nil {
		w.reserved = s.reserved
		s.onStep(w)
	}
	now := time.Now()
	done := map[*sequence]bool{}
	row := 0 // the first row of inputs[i] in res.Routes
	for i, q := range members {
		logits := res.Logits[i]
		n := len(inputs[i].Tokens)
		if p := inputs[i].Resume; p != nil {
			n = p.Tokens()
		}
		row += n
		if q.prefilled < len(q.req.Prompt) {
			if q.req.Explain {
				q.gatherPromptRoutes(res.Routes, row-n, n)
			}
			if q.partial = res.Partials[i]; q.partial != nil {
				continue
			}
			if q.req.PromptLogprobs {
				q.gatherPromptLogprobs(logits, n, s.model.Config.VocabSize)
			}
			if q.req.Explain {
				q.promptRoutes, q.pieceRoutes = append(q.promptRoutes, q.pieceRoutes...), nil
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
		if q.req.Explain {
			if q.generated == 1 {
				// The last prompt token's, which may have run its layers
				// over several steps.
				ev.Routes = q.promptRoutes[len(q.promptRoutes)-1]
				ev.PromptRoutes, q.promptRoutes = q.promptRoutes, nil
			} else {
				ev.Routes = routesOfRow(res.Routes, row-1)
			}
		}
		if q.generated == 1 {
			s.metrics.prefillTime.Observe(now.Sub(q.admitted).Seconds())
			s.metrics.ttft.Observe(now.Sub(q.submitted).Seconds())
		} else {
			s.metrics.tpot.Observe(now.Sub(q.lastToken).Seconds())
		}
		q.lastToken = now
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

// promptPiece chooses what of q's prompt (rest tokens to go) a step
// carries in the rows and prefill work it has left, adding it to w: the
// rest of a chunk an earlier step stopped between layers, else a chunk of
// the most tokens that fit, else, where not one whole token fits, one
// token through the layers that do. n is the rows the piece takes, 0 for
// none. Where not one layer fits, the oldest prompt spends its credit, or
// takes nothing and reports that it banks (bank), which the caller does
// once the younger prompts have had the rest of the step.
func (s *Scheduler) promptPiece(q *sequence, rest, rows int, oldest bool, w *stepWork) (in model.Input, n int, bank bool) {
	c, L := q.cache.Len(), s.cost.layers
	left := w.prefillBudget - w.prefillWork
	logitRows := func(n int) int {
		switch {
		case q.req.PromptLogprobs:
			return n
		case n == rest:
			return 1
		}
		return 0
	}
	from := 0
	if p := q.partial; p != nil {
		n, from = p.Tokens(), p.Layer()
		if n > rows {
			return in, 0, false
		}
		in = model.Input{Cache: q.cache, Resume: p}
	} else {
		chunk := func(n int) float64 { return s.cost.work(c, n, logitRows(n)) }
		if n = fit(min(rest, s.cfg.PrefillChunk, rows), left, chunk); n > 0 {
			if oldest {
				q.credit = 0
			}
			w.prefillTokens += n
			w.prefillWork += chunk(n)
			w.attention += s.cost.attended(c, n)
			return model.Input{Cache: q.cache, Tokens: q.req.Prompt[q.prefilled : q.prefilled+n], AllLogits: q.req.PromptLogprobs}, n, false
		}
		n = 1
		in = model.Input{Cache: q.cache, Tokens: q.req.Prompt[q.prefilled : q.prefilled+1], AllLogits: q.req.PromptLogprobs}
	}
	cost := func(k int) float64 { // of k more layers
		lr := 0
		if from+k == L {
			lr = logitRows(n)
		}
		return s.cost.partWork(c, n, k, lr)
	}
	k := fit(L-from, left, cost)
	switch {
	case k > 0 || !oldest:
		if oldest {
			q.credit = 0
		}
	case q.credit+left >= cost(1):
		k = 1
		w.spent = cost(1) - left
		q.credit -= w.spent
	default:
		bank = true
	}
	if k == 0 {
		return in, 0, bank
	}
	in.Layers = k
	if from+k == L {
		w.prefillTokens += n
	}
	w.pieceLayers += n * k
	w.prefillWork += cost(k)
	w.attention += s.cost.attended(c, n) * int64(k) / int64(L)
	return in, n, false
}

// gatherPromptRoutes keeps the routes of the n tokens of a prompt piece,
// rows row on, layer by layer, until they have gone through every layer.
func (q *sequence) gatherPromptRoutes(routes [][]model.Route, row, n int) {
	if q.pieceRoutes == nil {
		q.pieceRoutes = make([][]model.Route, n)
		for i := range q.pieceRoutes {
			q.pieceRoutes[i] = make([]model.Route, len(routes))
		}
	}
	for l, rs := range routes {
		for i := range n {
			if rt := rs[row+i]; rt.Experts != nil {
				q.pieceRoutes[i][l] = rt
			}
		}
	}
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

// routesOfRow picks one row's routes, per layer, out of a step's
// routes[layer][row].
func routesOfRow(routes [][]model.Route, row int) []model.Route {
	out := make([]model.Route, len(routes))
	for l, rs := range routes {
		out[l] = rs[row]
	}
	return out
}

// workModel prices a step's rows from the model's shapes, in multiply-adds
// of the weights (attention projections, gate, the chosen experts; lm_head
// for rows with logits) plus AttentionPrice times those of attention (q·k
// and the weighted v of every head at every attended position).
type workModel struct {
	layers int
	row    float64 // every row, all layers
	logits float64 // a row with logits
	pair   float64 // one attended position, all layers, priced
	window int64   // the sliding window, 0 without one
}

func newWorkModel(c *model.Config, attentionPrice float64) workModel {
	H, q, kv := float64(c.HiddenSize), float64(c.QDim()), float64(c.KVDim())
	layer := H*(q+2*kv) + q*H + H*float64(c.NumLocalExperts) + float64(c.NumExpertsPerTok)*3*H*float64(c.IntermediateSize)
	w := workModel{
		layers: c.NumHiddenLayers,
		row:    float64(c.NumHiddenLayers) * layer,
		logits: H * float64(c.VocabSize),
		pair:   attentionPrice * float64(c.NumHiddenLayers) * 2 * q,
	}
	if c.SlidingWindow != nil {
		w.window = int64(*c.SlidingWindow)
	}
	return w
}

// attended is the number of positions n tokens after c cached ones attend
// to in each layer: the token at position p sees p+1 of them, at most the
// sliding window.
func (w workModel) attended(c, n int) int64 {
	a, b := int64(c)+1, int64(c)+int64(n) // the first and last token's counts
	sum := func(a, b int64) int64 { return (a + b) * (b - a + 1) / 2 }
	switch {
	case n <= 0:
		return 0
	case w.window == 0 || b <= w.window:
		return sum(a, b)
	case a > w.window:
		return int64(n) * w.window
	}
	return sum(a, w.window) + (b-w.window)*w.window
}

// work prices n tokens after c cached ones, logitRows of them with logits.
func (w workModel) work(c, n, logitRows int) float64 {
	return w.partWork(c, n, w.layers, logitRows)
}

// partWork prices n tokens after c cached ones through k of the layers,
// logitRows of them with logits.
func (w workModel) partWork(c, n, k, logitRows int) float64 {
	share := float64(k) / float64(w.layers)
	return share*(float64(n)*w.row+float64(w.attended(c, n))*w.pair) + float64(logitRows)*w.logits
}

// fit returns the largest n in [0, most] whose cost(n), increasing in n, is
// at most budget.
func fit(most int, budget float64, cost func(n int) float64) int {
	lo, hi := 0, most // cost(lo) fits; the answer is in [lo, hi]
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if cost(mid) <= budget {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// DefaultKVCacheBytes is the KV cache budget of a router that sets none: a
// quarter of the machine's memory (of the cgroup's limit, if lower, as in a
// container), leaving the rest to the router's weights and everything
// else; 4 GiB where neither can be read.
func DefaultKVCacheBytes() int64 {
	const fallback = 4 << 30
	total := memTotal()
	if total <= 0 {
		return fallback
	}
	return total / 4
}

// memTotal is the memory this process may use: MemTotal of /proc/meminfo,
// or the cgroup v2 memory.max when lower; 0 when unknown.
func memTotal() int64 {
	var total int64
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				if kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64); err == nil {
					total = kb << 10
				}
				break
			}
		}
	}
	if b, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		if lim, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && lim > 0 && (total == 0 || lim < total) {
			total = lim
		}
	}
	return total
}
