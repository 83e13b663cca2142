package router

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/internal/apikey"
)

// The JSON of completions and of their stream chunks.
type (
	completionObject struct {
		ID      string             `json:"id"`
		Object  string             `json:"object"`
		Created int64              `json:"created"`
		Model   string             `json:"model"`
		Choices []completionChoice `json:"choices"`
		Usage   *usageObject       `json:"usage,omitempty"`
	}
	completionChoice struct {
		Index        int        `json:"index"`
		Text         *string    `json:"text,omitempty"`    // completions
		Message      *chatDelta `json:"message,omitempty"` // chat
		Delta        *chatDelta `json:"delta,omitempty"`   // chat stream
		Logprobs     any        `json:"logprobs"`          // nil, *legacyLogprobs or *chatLogprobs
		FinishReason *string    `json:"finish_reason"`
		// MoegridRoutes, with moegrid_explain, has one entry per generated
		// token the choice or chunk carries.
		MoegridRoutes []tokenRoutesJSON `json:"moegrid_routes,omitempty"`
	}
	chatDelta struct {
		Role    string  `json:"role,omitempty"`
		Content *string `json:"content,omitempty"`
	}
	usageObject struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	}
)

func (r *Router) handleCompletions(w http.ResponseWriter, req *http.Request) {
	body, ok := r.readBody(w, req)
	if !ok {
		return
	}
	a, err := parseCompletion(body)
	if err != nil {
		r.httpError(w, err)
		return
	}
	r.serveAPI(w, req, a)
}

func (r *Router) handleChat(w http.ResponseWriter, req *http.Request) {
	body, ok := r.readBody(w, req)
	if !ok {
		return
	}
	a, msgs, err := parseChat(body)
	var ids []int
	if err == nil {
		ids, err = r.chatPrompt(msgs)
	}
	if err != nil {
		r.httpError(w, err)
		return
	}
	a.prompts = []prompt{{ids: ids}}
	r.serveAPI(w, req, a)
}

// piece is a part of a choice's output, in order: the echoed prompt, then
// the completion as it is sampled. Tokens are its tokens when the request
// asked for log-probabilities; a piece may have text but no tokens (text
// held back from earlier tokens) or tokens but no text (the start of a
// character, or text that may become a stop string).
type piece struct {
	text   string
	tokens []pieceToken
	// routes are the generated tokens' routes when the request asked to
	// explain; unlike tokens they are not held back with the text.
	routes []tokenRoutesJSON
}

// choice is one choice of a response: the completion of a prompt.
type choice struct {
	index  int
	prompt prompt // as the client sent it, for echo
	c      completion
	// first is set on the first choice of its prompt, which counts the
	// prompt's tokens in the usage.
	first bool
}

// outcome is how a choice ended.
type outcome struct {
	finish FinishReason
	usage  usage
}

// choices validates every prompt and makes its n choices. With a seed,
// choice i samples with seed+i, so that n choices differ yet repeat.
func (r *Router) choices(a *apiRequest) ([]choice, error) {
	var out []choice
	for i, pr := range a.prompts {
		p := a.params
		p.text, p.ids = pr.text, pr.ids
		c, err := r.validate(p)
		if err != nil {
			// The parameters all prompts share passed with the first, so
			// a later prompt's error is its own.
			if i > 0 && errors.Is(err, ErrInvalid) {
				return nil, badParam("prompt", "prompt[%d]: %s", i, strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": "))
			}
			return nil, err
		}
		for j := range a.n {
			ch := choice{index: len(out), prompt: pr, c: c, first: j == 0}
			switch {
			case a.params.seed != nil:
				ch.c.sampling.Seed = *a.params.seed + uint64(ch.index)
			case j > 0:
				ch.c.sampling.Seed = r.seeds.Next()
			}
			out = append(out, ch)
		}
	}
	return out, nil
}

// serveAPI validates a parsed request, runs its choices together and writes
// them as one JSON response or as server-sent events.
func (r *Router) serveAPI(w http.ResponseWriter, req *http.Request, a *apiRequest) {
	start := time.Now()
	choices, err := r.choices(a)
	if err != nil {
		r.httpError(w, err)
		return
	}
	out := response{
		r: r, a: a,
		obj: completionObject{ID: fmt.Sprintf("cmpl-%x", r.seeds.Next()), Object: "text_completion", Created: start.Unix(), Model: r.cfg.ModelName},
	}
	if a.chat {
		out.obj.ID = "chat" + out.obj.ID
		out.obj.Object = "chat.completion"
	}
	var outcomes []outcome
	if a.stream {
		outcomes, err = out.stream(req.Context(), w, choices)
	} else {
		outcomes, err = out.whole(req.Context(), w, choices)
	}
	code := status.Code(toStatus(err))
	r.metrics.requests.WithLabelValues("http", code.String()).Inc()
	u := totalUsage(choices, outcomes)
	attrs := []any{"endpoint", a.endpoint, "user", a.user, "stream", a.stream, "choices", len(choices),
		"prompt_tokens", u.prompt, "completion_tokens", u.completion, "duration", time.Since(start)}
	if id, ok := apikey.IDFromContext(req.Context()); ok {
		attrs = append(attrs, "key_id", id)
	}
	if err != nil {
		attrs = append(attrs, "code", code.String(), "err", err)
	} else {
		finishes := make([]string, len(outcomes))
		for i, oc := range outcomes {
			finishes[i] = finishName(oc.finish)
		}
		attrs = append(attrs, "finish", strings.Join(finishes, ","))
	}
	r.log.Info("completion", attrs...)
}

// totalUsage adds up the choices' usage, each prompt counted once.
func totalUsage(choices []choice, outcomes []outcome) usage {
	var u usage
	for i, oc := range outcomes {
		if choices[i].first {
			u.prompt += oc.usage.prompt
		}
		u.completion += oc.usage.completion
	}
	return u
}

// response writes one request's completion.
type response struct {
	r   *Router
	a   *apiRequest
	obj completionObject // the envelope: id, object, created, model
}

// runAll runs every choice in its own goroutine, the scheduler batching
// them; each calls emit from its goroutine. The first error cancels the
// others. It returns when all have ended.
func (o *response) runAll(ctx context.Context, choices []choice, run func(ctx context.Context, ch choice) (outcome, error)) ([]outcome, error) {
	outcomes := make([]outcome, len(choices))
	g, ctx := errgroup.WithContext(ctx)
	for i, ch := range choices {
		g.Go(func() error {
			var err error
			outcomes[i], err = run(ctx, ch)
			return err
		})
	}
	return outcomes, g.Wait()
}

// run generates one choice, calling emit with each piece.
func (o *response) run(ctx context.Context, ch choice, emit func(piece) error) (outcome, error) {
	c := ch.c
	// offset is the length of the choice's text so far, in text_offset's
	// characters, counted token by token; the text itself may lag behind
	// while a stop string is possible.
	offset := 0
	echoed := !o.a.echo
	echo := func(ck chunk) error {
		if echoed {
			return nil
		}
		echoed = true
		p := piece{text: o.r.tok.Decode(c.prompt)}
		if ch.prompt.text != nil {
			p.text = *ch.prompt.text // as the client sent it
		}
		dec := o.r.tok.NewStreamDecoder(true)
		for i, lp := range ck.promptLogprobs {
			p.tokens = append(p.tokens, pieceToken{lp: lp, predicted: i > 0, offset: offset})
			offset += utf8.RuneCountInString(dec.Next(lp.Token))
		}
		offset = utf8.RuneCountInString(p.text)
		return emit(p)
	}
	if o.a.promptOnly {
		oc := outcome{finish: FinishLength, usage: usage{prompt: len(c.prompt)}}
		if !o.a.logprobs {
			return oc, echo(chunk{})
		}
		// The scheduler samples at least one token; the prompt's
		// log-probabilities come with it, and it is dropped.
		_, _, err := o.r.complete(ctx, c, echo)
		return oc, err
	}
	dec := o.r.tok.NewStreamDecoder(false)
	// complete emits a chunk for every token, so the echo goes first.
	finish, u, err := o.r.complete(ctx, c, func(ck chunk) error {
		if err := echo(ck); err != nil {
			return err
		}
		p := piece{text: ck.text}
		for i, rs := range ck.routes {
			p.routes = append(p.routes, tokenRoutesOf(ck.tokens[i], rs))
		}
		for _, lp := range ck.logprobs {
			p.tokens = append(p.tokens, pieceToken{lp: lp, predicted: true, offset: offset})
			offset += utf8.RuneCountInString(dec.Next(lp.Token))
		}
		return emit(p)
	})
	return outcome{finish: finish, usage: u}, err
}

// whole writes the completion as one JSON response.
func (o *response) whole(ctx context.Context, w http.ResponseWriter, choices []choice) ([]outcome, error) {
	texts := make([]strings.Builder, len(choices))
	lps := make([]*logprobsJSON, len(choices))
	routes := make([][]tokenRoutesJSON, len(choices))
	outcomes, err := o.runAll(ctx, choices, func(ctx context.Context, ch choice) (outcome, error) {
		if o.a.logprobs {
			lps[ch.index] = o.newLogprobs()
		}
		return o.run(ctx, ch, func(p piece) error {
			texts[ch.index].WriteString(p.text)
			routes[ch.index] = append(routes[ch.index], p.routes...)
			if l := lps[ch.index]; l != nil {
				l.add(p.tokens)
			}
			return nil
		})
	})
	if err != nil {
		writeHTTPError(w, err)
		return outcomes, err
	}
	o.obj.Choices = make([]completionChoice, len(choices))
	for i := range choices {
		s, f := texts[i].String(), finishName(outcomes[i].finish)
		cc := completionChoice{Index: i, FinishReason: &f, MoegridRoutes: routes[i]}
		if lps[i] != nil {
			cc.Logprobs = lps[i].value()
		}
		if o.a.chat {
			cc.Message = &chatDelta{Role: "assistant", Content: &s}
		} else {
			cc.Text = &s
		}
		o.obj.Choices[i] = cc
	}
	o.obj.Usage = usageJSON(totalUsage(choices, outcomes))
	b, err := marshal(o.obj)
	if err != nil {
		err = fmt.Errorf("router: writing the completion: %w", err)
		writeHTTPError(w, err)
		return outcomes, err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(b, '\n'))
	return outcomes, nil
}

// stream writes the completion as server-sent events: chunks of each
// choice's text as it is sampled, each choice's last with its finish
// reason, one with the usage if asked, and "[DONE]". A chat choice's first
// delta carries the role.
func (o *response) stream(ctx context.Context, w http.ResponseWriter, choices []choice) ([]outcome, error) {
	if o.a.chat {
		o.obj.Object = "chat.completion.chunk"
	}
	flusher, _ := w.(http.Flusher)
	// mu serialises the choices' events.
	var mu sync.Mutex
	// began is set once the event stream has begun; errors before that are
	// HTTP errors. Protected by mu until every choice has ended.
	began := false
	send := func(v any) error {
		b, err := marshal(v)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if !began {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Cache-Control", "no-cache")
			began = true
		}
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	}
	outcomes, err := o.runAll(ctx, choices, func(ctx context.Context, ch choice) (outcome, error) {
		roleSent := false
		chunk := func(p piece, finish *string) completionObject {
			cc := completionChoice{Index: ch.index, FinishReason: finish, MoegridRoutes: p.routes}
			if o.a.logprobs && finish == nil {
				lps := o.newLogprobs()
				lps.add(p.tokens)
				cc.Logprobs = lps.value()
			}
			if o.a.chat {
				cc.Delta = &chatDelta{}
				if finish == nil {
					cc.Delta.Content = &p.text
				}
				if !roleSent {
					cc.Delta.Role, roleSent = "assistant", true
				}
			} else {
				cc.Text = &p.text
			}
			obj := o.obj
			obj.Choices = []completionChoice{cc}
			return obj
		}
		oc, err := o.run(ctx, ch, func(p piece) error {
			if p.text == "" && len(p.tokens) == 0 && len(p.routes) == 0 {
				return nil
			}
			return send(chunk(p, nil))
		})
		if err != nil {
			return oc, err
		}
		f := finishName(oc.finish)
		return oc, send(chunk(piece{}, &f))
	})
	if err != nil && !began {
		writeHTTPError(w, err)
		return outcomes, err
	}
	if err != nil {
		// Headers are gone; report the error in the stream.
		send(map[string]any{"error": errorBody(err)})
		return outcomes, err
	}
	if o.a.includeUsage {
		last := o.obj
		last.Choices = []completionChoice{}
		last.Usage = usageJSON(totalUsage(choices, outcomes))
		if err := send(last); err != nil {
			return outcomes, err
		}
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
	if flusher != nil {
		flusher.Flush()
	}
	return outcomes, nil
}

// finishName is OpenAI's finish_reason; "" for a completion that did not
// finish.
func finishName(f FinishReason) string {
	switch f {
	case FinishStop:
		return "stop"
	case FinishLength:
		return "length"
	}
	return ""
}

func usageJSON(u usage) *usageObject {
	return &usageObject{PromptTokens: u.prompt, CompletionTokens: u.completion, TotalTokens: u.prompt + u.completion}
}
