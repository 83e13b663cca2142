package router

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/moegrid/moegrid/internal/apikey"
	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/sample"
	"github.com/moegrid/moegrid/model/tokenizer"
)

// ErrInvalid is wrapped by every error about a request's parameters; the
// message names the field.
var ErrInvalid = errors.New("router: invalid request")

// Limits on a request's parameters.
const (
	maxStopStrings = 16
	maxStopBytes   = 256
	maxPromptBytes = 1 << 20
)

// completion is a validated request, whichever API it came from.
type completion struct {
	prompt    []int
	maxTokens int
	sampling  sample.Params
	stop      []string
	ignoreEOS bool
	// logprobs and promptLogprobs are Request's Logprobs and PromptLogprobs.
	logprobs       int
	promptLogprobs bool
	// explain is Request's Explain.
	explain bool
	// resumed are the tokens a cut stream of this completion already sent
	// (see resume); they count in maxTokens.
	resumed []int
}

// chunk is one piece of a completion's stream.
type chunk struct {
	tokens []int
	text   string
	// logprobs has one entry per token when the completion asked for
	// log-probabilities.
	logprobs []TokenLogprob
	// promptLogprobs, on the first chunk of a completion that asked for
	// them, has one entry per prompt token (see Event.PromptLogprobs).
	promptLogprobs []TokenLogprob
	// routes has one entry per token, per layer, when the completion asked
	// to explain (see Event.Routes); promptRoutes, on the first chunk, one
	// per prompt token (see Event.PromptRoutes).
	routes       [][]model.Route
	promptRoutes [][]model.Route
}

// usage counts a completion's tokens.
type usage struct {
	prompt, completion int
}

// completionParams are a request's fields before validation, in API-neutral
// form; field names in errors are those of the gRPC API.
type completionParams struct {
	text        *string
	ids         []int
	maxTokens   int
	temperature float64
	topP        float64
	topK        int
	seed        *uint64
	stop        []string
	ignoreEOS   bool
	// logprobs is the number of alternatives with each token's
	// log-probability (0: none); promptLogprobs asks for the prompt's.
	logprobs       int
	promptLogprobs bool
	// promptOnly scores the prompt: the one token sampled after it is
	// dropped, never fed back, so the prompt may fill the context.
	promptOnly bool
	// explain asks for the routes behind every token.
	explain bool
	// resume are the tokens a stream cut on another router sent.
	resume []int
}

// validate turns params into a completion, tokenizing a text prompt with BOS.
func (r *Router) validate(p completionParams) (completion, error) {
	bad := func(format string, args ...any) (completion, error) {
		return completion{}, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
	}
	cfg := &r.model.Config
	var prompt []int
	switch {
	case p.text != nil && p.ids != nil:
		return bad("give either prompt text or ids, not both")
	case p.text != nil:
		if *p.text == "" {
			return bad("text: the prompt is empty")
		}
		if len(*p.text) > maxPromptBytes {
			return bad("text: %d bytes, at most %d", len(*p.text), maxPromptBytes)
		}
		prompt = r.tok.Encode(*p.text, true)
	case len(p.ids) > 0:
		for i, id := range p.ids {
			if id < 0 || id >= cfg.VocabSize {
				return bad("ids[%d]: token id %d outside the vocabulary [0, %d)", i, id, cfg.VocabSize)
			}
		}
		prompt = p.ids
	default:
		return bad("prompt: give text or ids")
	}
	room := cfg.MaxPositionEmbeddings - len(prompt)
	if p.promptOnly {
		room++
	}
	maxTokens := p.maxTokens
	if maxTokens == 0 {
		// The default never asks for more than the context holds.
		maxTokens = min(r.cfg.DefaultMaxTokens, max(room, 1))
	}
	switch {
	case maxTokens < 0:
		return bad("max_tokens %d must not be negative", p.maxTokens)
	case room <= 0:
		return bad("prompt: %d tokens leave no room in the model's context of %d", len(prompt), cfg.MaxPositionEmbeddings)
	case maxTokens > room:
		return bad("max_tokens %d exceeds the %d positions left after the %d-token prompt", maxTokens, room, len(prompt))
	case math.IsNaN(p.temperature) || p.temperature < 0 || p.temperature > 100:
		return bad("temperature %v must be in [0, 100]", p.temperature)
	case math.IsNaN(p.topP) || p.topP < 0 || p.topP > 1:
		return bad("top_p %v must be in [0, 1]", p.topP)
	case p.topK < 0:
		return bad("top_k %d must not be negative", p.topK)
	case p.logprobs < 0 || p.logprobs > MaxLogprobs:
		return bad("logprobs %d must be in [0, %d]", p.logprobs, MaxLogprobs)
	case len(p.stop) > maxStopStrings:
		return bad("stop: %d strings, at most %d", len(p.stop), maxStopStrings)
	}
	if err := r.sched.checkSize(len(prompt), maxTokens); err != nil {
		return completion{}, err
	}
	if err := checkResume(p.resume, maxTokens, cfg.VocabSize); err != nil {
		return completion{}, err
	}
	if p.explain {
		if err := checkExplain(len(prompt), maxTokens, r.cfg.MaxExplainTokens); err != nil {
			return completion{}, err
		}
	}
	for i, s := range p.stop {
		if s == "" || len(s) > maxStopBytes {
			return bad("stop[%d]: must be 1 to %d bytes", i, maxStopBytes)
		}
	}
	seed := r.seeds.Next()
	if p.seed != nil {
		seed = *p.seed
	}
	return completion{
		prompt:         prompt,
		maxTokens:      maxTokens,
		sampling:       sample.Params{Temperature: p.temperature, TopK: p.topK, TopP: p.topP, Seed: seed},
		stop:           p.stop,
		ignoreEOS:      p.ignoreEOS,
		logprobs:       p.logprobs,
		promptLogprobs: p.promptLogprobs,
		explain:        p.explain,
		resumed:        p.resume,
	}, nil
}

// complete runs a completion, calling emit with each piece of text as it is
// sampled (never half a UTF-8 character, never text past a stop string). It
// returns why the completion finished and its usage.
func (r *Router) complete(ctx context.Context, c completion, emit func(chunk) error) (FinishReason, usage, error) {
	var cancel context.CancelFunc
	if _, ok := ctx.Deadline(); !ok && r.cfg.RequestTimeout > 0 {
		// Every request has a deadline, the client's or the router's.
		ctx, cancel = context.WithTimeout(ctx, r.cfg.RequestTimeout)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	defer cancel()
	sampler, err := sample.New(c.sampling)
	if err != nil {
		return 0, usage{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	st := newStopper(r.tok, c.stop)
	u := usage{prompt: len(c.prompt), completion: len(c.resumed)}
	req, finish, tail, ended := r.resume(c, Request{
		Prompt: c.prompt, MaxTokens: c.maxTokens, IgnoreEOS: c.ignoreEOS, Sampler: sampler,
		Logprobs: c.logprobs, PromptLogprobs: c.promptLogprobs, Explain: c.explain,
	}, st)
	if ended {
		if tail != "" {
			if err := emit(chunk{text: tail}); err != nil {
				return 0, u, clientGone(ctx, err)
			}
		}
		return finish, u, nil
	}
	events, err := r.sched.Submit(ctx, req)
	if err != nil {
		return 0, usage{}, err
	}
	apikey.Charge(ctx, len(req.Prompt))
	for ev := range events {
		switch {
		case ev.Err != nil:
			return 0, u, ev.Err
		case ev.Finish != 0:
			if text := st.flush(); text != "" {
				if err := emit(chunk{text: text}); err != nil {
					return 0, u, clientGone(ctx, err)
				}
			}
			return ev.Finish, u, nil
		}
		u.completion++
		apikey.Charge(ctx, 1)
		text, stopped := st.next(ev.Token)
		ch := chunk{tokens: []int{ev.Token}, text: text, promptLogprobs: ev.PromptLogprobs, promptRoutes: ev.PromptRoutes}
		if ev.Logprob != nil {
			ch.logprobs = []TokenLogprob{*ev.Logprob}
		}
		if ev.Routes != nil {
			ch.routes = [][]model.Route{ev.Routes}
		}
		if err := emit(ch); err != nil {
			return 0, u, clientGone(ctx, err)
		}
		if stopped {
			return FinishStop, u, nil
		}
	}
	return 0, u, ErrStopped
}

// clientGone returns the context's error for an emit that failed because
// the client cancelled or its deadline passed (a write to a gone client
// fails with a transport error that would read as the server's fault), else
// err.
func clientGone(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// stopper decodes a token stream into text and cuts it at the first stop
// string, holding back any tail that could still become one.
type stopper struct {
	dec   *tokenizer.StreamDecoder
	stops []string
	held  string
}

func newStopper(tok *tokenizer.Tokenizer, stops []string) *stopper {
	// The completion continues the prompt, so its leading space is real.
	return &stopper{dec: tok.NewStreamDecoder(false), stops: stops}
}

// next adds a token; it returns the text now safe to emit and whether a stop
// string was reached.
func (s *stopper) next(id int) (string, bool) {
	s.held += s.dec.Next(id)
	cut := -1
	for _, stop := range s.stops {
		if i := strings.Index(s.held, stop); i >= 0 && (cut < 0 || i < cut) {
			cut = i
		}
	}
	if cut >= 0 {
		text := s.held[:cut]
		s.held = ""
		return text, true
	}
	keep := 0
	for _, stop := range s.stops {
		for n := min(len(stop)-1, len(s.held)); n > keep; n-- {
			if strings.HasSuffix(s.held, stop[:n]) {
				keep = n
				break
			}
		}
	}
	text := s.held[:len(s.held)-keep]
	s.held = s.held[len(s.held)-keep:]
	return text, false
}

// flush returns whatever is held once the stream has ended.
func (s *stopper) flush() string {
	text := s.held + s.dec.Flush()
	s.held = ""
	for _, stop := range s.stops {
		if i := strings.Index(text, stop); i >= 0 {
			text = text[:i]
		}
	}
	return text
}
