package router

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/moegrid/moegrid/model"
)

func TestWorkModelAttended(t *testing.T) {
	// By the definition: the token at position p attends to p+1 positions,
	// at most the window.
	loop := func(window, c, n int) int64 {
		var sum int64
		for p := c; p < c+n; p++ {
			a := int64(p + 1)
			if window > 0 {
				a = min(a, int64(window))
			}
			sum += a
		}
		return sum
	}
	for _, window := range []int{0, 1, 7, 64} {
		cfg := fx.model.Config
		if window > 0 {
			cfg.SlidingWindow = &window
		}
		w := newWorkModel(&cfg, DefaultAttentionPrice)
		for _, c := range []int{0, 1, 5, 6, 7, 63, 64, 100, 30000} {
			for _, n := range []int{0, 1, 2, 8, 57, 256} {
				if got, want := w.attended(c, n), loop(window, c, n); got != want {
					t.Errorf("window %d: attended(%d, %d) = %d, want %d", window, c, n, got, want)
				}
			}
		}
	}
}

func TestFit(t *testing.T) {
	w := newWorkModel(&fx.model.Config, DefaultAttentionPrice)
	row := w.row
	for _, tc := range []struct {
		name   string
		c      int
		most   int
		budget float64
	}{
		{"nothing fits", 0, 256, row - 1},
		{"one token", 0, 256, row + w.pair},
		{"all fit", 0, 16, math.Inf(1)},
		{"long context", 30000, 256, 20 * row},
		{"most 0", 10, 0, math.Inf(1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cost := func(n int) float64 { return w.work(tc.c, n, 0) }
			n := fit(tc.most, tc.budget, cost)
			if n < 0 || n > tc.most || (n > 0 && cost(n) > tc.budget) {
				t.Fatalf("fit = %d: outside [0, %d] or over the budget", n, tc.most)
			}
			if n < tc.most && cost(n+1) <= tc.budget {
				t.Errorf("fit = %d, but %d tokens fit too", n, n+1)
			}
		})
	}
}

// At the scale, a 30 000-token prompt near the end of its prefill
// beside decoding streams: the chunk the rule gives keeps the step within
// twice the decoding rows' work where the old fixed 256-token chunk
// multiplied it by hundreds. One token is the least a step can give a
// prompt; with the tiny model (whose decode rows are cheap next to its
// attention at long context) and few streams, one token already costs
// more than the share, and the prompt banks the share over steps without
// prompt tokens, carrying a token on one step in (its cost / the share).
func TestFairChunkAtLongContext(t *testing.T) {
	w := newWorkModel(&fx.model.Config, DefaultAttentionPrice)
	const decodeContext, c = 40, 29000
	for _, tc := range []struct {
		decoders int
		want     int // tokens that fit the share
	}{
		{1, 0},
		{4, 0},
		{16, 1},
		{64, 5},
	} {
		decodeWork := float64(tc.decoders)*w.work(decodeContext, 1, 1) + DefaultStepBaseRows*w.row
		budget := DefaultSchedulerConfig().PrefillShare * decodeWork
		n := fit(256, budget, func(n int) float64 { return w.work(c, n, 0) })
		step := (decodeWork + w.work(c, max(n, 1), 0)) / decodeWork
		old := (decodeWork + w.work(c, 256, 0)) / decodeWork
		t.Logf("%2d decoders at context %d: chunk %d, step work %.2f× the decode-only step (a 256-token chunk: %.0f×); a token every %.1f steps",
			tc.decoders, c, max(n, 1), step, old, max(1, w.work(c, 1, 0)/budget))
		if n != tc.want {
			t.Errorf("%d decoders: chunk %d at context %d, want %d", tc.decoders, n, c, tc.want)
		}
		if n > 0 && step > 2 || old < 50 {
			t.Errorf("%d decoders: step work %.2f× (want ≤ 2), old rule %.0f× (want ≥ 50)", tc.decoders, step, old)
		}
	}
}

// longPromptSteps runs decoders streams, then a prompt of long tokens
// beside them through a scheduler of cfg, and returns the steps computed
// while the prompt was prefilled.
func longPromptSteps(t *testing.T, cfg SchedulerConfig, decoders, long int) []stepWork {
	t.Helper()
	ctx := testContext(t)
	prompt := make([]int, long)
	for i := range prompt {
		prompt[i] = 1 + (i*7919)%(fx.model.Config.VocabSize-1)
	}

	var phase atomic.Bool // set while the long prompt is being prefilled
	var mu sync.Mutex
	var steps []stepWork
	s, met := newScheduler(cfg, fx.model, fx.experts)
	s.onStep = func(w stepWork) {
		if phase.Load() {
			mu.Lock()
			defer mu.Unlock()
			steps = append(steps, w)
		}
	}
	runScheduler(t, s)

	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	streams := decodingStreams(t, ctx, streamCtx, s, decoders)
	phase.Store(true)
	events, err := s.Submit(ctx, Request{Prompt: prompt, MaxTokens: 1, Sampler: greedy()})
	if err != nil {
		t.Fatal(err)
	}
	toks, end := collect(t, ctx, events)
	phase.Store(false)
	if len(toks) != 1 || end.Finish != FinishLength {
		t.Fatalf("long prompt: %d tokens, end %+v", len(toks), end)
	}
	cancel()
	for _, events := range streams {
		collect(t, ctx, events)
	}
	idle(t, met)

	mu.Lock()
	defer mu.Unlock()
	var prefilled int
	for i, w := range steps {
		if w.decoding != decoders {
			t.Errorf("step %d gave %d streams a token, want all %d", i, w.decoding, decoders)
		}
		if w.prefillBudget != cfg.PrefillShare*w.decodeWork {
			t.Errorf("step %d: prefill budget %v, want %v × the decode work %v", i, w.prefillBudget, cfg.PrefillShare, w.decodeWork)
		}
		prefilled += w.prefillTokens
	}
	if prefilled != long {
		t.Errorf("prefilled %d prompt tokens in the recorded steps, want %d", prefilled, long)
	}
	return steps
}

// decodingStreams submits n long requests to s under streamCtx and waits
// (under ctx) for each one's first token, so that all of them decode.
func decodingStreams(t *testing.T, ctx, streamCtx context.Context, s *Scheduler, n int) []<-chan Event {
	t.Helper()
	var streams []<-chan Event
	for i, p := range prompts(n) {
		events, err := s.Submit(streamCtx, Request{Prompt: p, MaxTokens: 20000, IgnoreEOS: true, Sampler: greedy()})
		if err != nil {
			t.Fatalf("Submit %d: %v", i, err)
		}
		nextToken(t, ctx, events)
		streams = append(streams, events)
	}
	return streams
}

// A long prompt arriving beside decoding streams is prefilled over many
// steps; every one of them gives each stream its token, and none carries
// prompts whose estimated time passes the budget (PrefillShare times the
// decoding part's), so the steps that carry the streams' tokens at most
// double (the default share).
func TestSchedulerLongPromptFair(t *testing.T) {
	cfg := DefaultSchedulerConfig()
	const long = 600
	steps := longPromptSteps(t, cfg, 3, long)
	var chunks []int
	var worst float64
	for i, w := range steps {
		if w.prefillTokens == 0 {
			continue
		}
		chunks = append(chunks, w.prefillTokens)
		// With these sizes one prompt token always fits, so no step needs
		// the prompt's bank.
		if w.prefillWork > w.prefillBudget || w.banked != 0 || w.spent != 0 {
			t.Errorf("step %d: %d prompt tokens of work %v, budget %v, banked %v, spent %v: want within the budget, no bank", i, w.prefillTokens, w.prefillWork, w.prefillBudget, w.banked, w.spent)
		}
		worst = max(worst, (w.decodeWork+w.prefillWork)/w.decodeWork)
	}
	if len(chunks) < 10 || chunks[0] <= chunks[len(chunks)-2] {
		t.Errorf("chunks %v: want the prompt spread over many steps, shrinking as its context grows", chunks)
	}
	t.Logf("%d-token prompt over %d steps, chunks %d → %d tokens, worst step %.2f× the decode-only work", long, len(chunks), chunks[0], chunks[len(chunks)-2], worst)
}

// Where one layer of one prompt token costs more than a step's share (here
// a share of 0.01, which every token-layer of the tiny model passes), the
// prompt advances by none on most steps, banking the share, and by one
// layer of one token on the step its bank covers it: it still completes,
// no step carries more than that one token-layer beyond the budget, and
// over the prefill the prompt takes its share of the work within one
// token-layer's excess.
func TestSchedulerLongPromptBanks(t *testing.T) {
	cfg := DefaultSchedulerConfig()
	cfg.PrefillShare = 0.01
	steps := longPromptSteps(t, cfg, 3, 16)
	var budget, work, credit, worstSpent float64
	var empty, over int
	for i, w := range steps {
		budget += w.prefillBudget
		work += w.prefillWork
		credit += w.banked - w.spent
		worstSpent = max(worstSpent, w.spent)
		switch {
		case w.banked > 0 && (w.prefillTokens != 0 || w.pieceLayers != 0 || w.spent != 0):
			t.Errorf("step %d banked %v but carried %d prompt tokens, %d token-layers (spent %v)", i, w.banked, w.prefillTokens, w.pieceLayers, w.spent)
		case w.spent > 0 && w.pieceLayers != 1:
			t.Errorf("step %d spent the bank on %d token-layers, want one token through one layer", i, w.pieceLayers)
		case w.prefillWork > w.prefillBudget+w.spent:
			t.Errorf("step %d: prompt work %v over the budget %v and what it spent %v", i, w.prefillWork, w.prefillBudget, w.spent)
		case w.spent > 0:
			over++
		case w.pieceLayers == 0 && w.prefillTokens == 0:
			empty++
		}
		if credit < -1e-6*budget {
			t.Fatalf("step %d: the prompt spent %v more than it banked", i, -credit)
		}
	}
	if over == 0 || empty == 0 {
		t.Errorf("%d steps over the budget and %d without prompt tokens: want the bank filled and used", over, empty)
	}
	if work > budget+worstSpent {
		t.Errorf("the prompt took %v of work over its prefill, more than its share %v and one token's excess %v", work, budget, worstSpent)
	}
	t.Logf("%d steps: %d over the budget, %d without prompt tokens; prompt work %.3g of a share of %.3g", len(steps), over, empty, work, budget)
}

// The scheduler's work model prices what model.Forward computes: a
// prompt's prefill costs more per token the longer its context.
func TestWorkModelPrompts(t *testing.T) {
	w := newWorkModel(&fx.model.Config, DefaultAttentionPrice)
	var _ model.Config = fx.model.Config
	short, long := w.work(0, 16, 0), w.work(20000, 16, 0)
	if long <= 10*short {
		t.Errorf("16 tokens after 20000 cost %v, after none %v: attention should dominate", long, short)
	}
}

// A prompt whose tokens a small share splits between layers, beside a
// decoding stream, gives the events it gives alone: its tokens, their
// log-probabilities, the prompt's and the tokens' routes.
func TestSchedulerLayerSplitMatchesAlone(t *testing.T) {
	ctx := testContext(t)
	req := Request{Prompt: prompts(3)[2], MaxTokens: 4, IgnoreEOS: true, Logprobs: 2, PromptLogprobs: true, Explain: true}
	events := func(s *Scheduler) []Event {
		t.Helper()
		r := req
		r.Sampler = greedy()
		ch, err := s.Submit(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		var evs []Event
		for ev := range ch {
			evs = append(evs, ev)
		}
		return evs
	}
	alone, _ := newScheduler(DefaultSchedulerConfig(), fx.model, fx.experts)
	runScheduler(t, alone)
	want := events(alone)

	cfg := DefaultSchedulerConfig()
	cfg.PrefillShare = 0.01
	split, _ := newScheduler(cfg, fx.model, fx.experts)
	var pieceLayers atomic.Int64
	split.onStep = func(w stepWork) { pieceLayers.Add(int64(w.pieceLayers)) }
	runScheduler(t, split)
	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	decodingStreams(t, ctx, streamCtx, split, 1)
	got := events(split)
	if pieceLayers.Load() == 0 {
		t.Fatal("no prompt token was split between layers")
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("events (-alone +split between layers):\n%s", d)
	}
}

// The oldest prompt banks what a step leaves of the share, not what it
// saw before a younger prompt took its part: a long prompt whose next
// layer does not fit, beside a short one whose tokens do, gains no credit
// for work the short one did.
func TestSchedulerBankCountsWhatIsLeft(t *testing.T) {
	ctx := testContext(t)
	w := newWorkModel(&fx.model.Config, DefaultAttentionPrice)
	const decoders, bankFrom = 1, 300
	// A share between a fresh prompt's token (no logits) and one layer of
	// a token at bankFrom cached positions.
	decodeWork := float64(decoders)*w.work(40, 1, 1) + DefaultStepBaseRows*w.row
	cfg := DefaultSchedulerConfig()
	cfg.PrefillShare = (w.work(0, 1, 0) + w.partWork(bankFrom, 1, 1, 0)) / 2 / decodeWork

	s, met := newScheduler(cfg, fx.model, fx.experts)
	banking := make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	var steps []stepWork
	var phase atomic.Bool // set once the long prompt is in
	s.onStep = func(sw stepWork) {
		if !phase.Load() {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		steps = append(steps, sw)
		if sw.banked > 0 {
			once.Do(func() { close(banking) })
		}
	}
	runScheduler(t, s)
	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	streams := decodingStreams(t, ctx, streamCtx, s, decoders)
	long := make([]int, bankFrom+40)
	for i := range long {
		long[i] = 1 + (i*7919)%(fx.model.Config.VocabSize-1)
	}
	phase.Store(true)
	longEvents, err := s.Submit(streamCtx, Request{Prompt: long, MaxTokens: 1, Sampler: greedy()})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-banking:
	case <-ctx.Done():
		t.Fatal("the long prompt never banked")
	}
	short, err := s.Submit(ctx, Request{Prompt: prompts(decoders + 1)[decoders], MaxTokens: 1, Sampler: greedy()})
	if err != nil {
		t.Fatal(err)
	}
	collect(t, ctx, short)
	cancel()
	collect(t, ctx, longEvents)
	for _, events := range streams {
		collect(t, ctx, events)
	}
	idle(t, met)

	mu.Lock()
	defer mu.Unlock()
	shared := 0
	for i, sw := range steps {
		if sw.banked <= 0 {
			continue
		}
		if sw.prefillWork > 0 {
			shared++
		}
		if sw.banked+sw.prefillWork > sw.prefillBudget*(1+1e-9) {
			t.Errorf("step %d banked %v beside %v of younger prompts' work, over the budget %v", i, sw.banked, sw.prefillWork, sw.prefillBudget)
		}
	}
	if shared == 0 {
		t.Error("no step banked beside a younger prompt's work")
	}
	t.Logf("%d steps, %d of them banking beside the short prompt", len(steps), shared)
}
