package router

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/status"
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
	if err == nil {
		a.params.ids, err = r.chatPrompt(msgs)
	}
	if err != nil {
		r.httpError(w, err)
		return
	}
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
}

// serveAPI validates a parsed request, runs it and writes it as one JSON
// response or as server-sent events.
func (r *Router) serveAPI(w http.ResponseWriter, req *http.Request, a *apiRequest) {
	start := time.Now()
	c, err := r.validate(a.params)
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
	var finish FinishReason
	var u usage
	if a.stream {
		finish, u, err = out.stream(req.Context(), w, c)
	} else {
		finish, u, err = out.whole(req.Context(), w, c)
	}
	code := status.Code(toStatus(err))
	r.metrics.requests.WithLabelValues("http", code.String()).Inc()
	attrs := []any{"endpoint", a.endpoint, "user", a.user, "stream", a.stream,
		"prompt_tokens", u.prompt, "completion_tokens", u.completion, "duration", time.Since(start)}
	if err != nil {
		attrs = append(attrs, "code", code.String(), "err", err)
	} else {
		attrs = append(attrs, "finish", finishName(finish))
	}
	r.log.Info("completion", attrs...)
}

// response writes one request's completion.
type response struct {
	r   *Router
	a   *apiRequest
	obj completionObject // the envelope: id, object, created, model
}

// run generates the completion, calling emit with each piece.
func (o *response) run(ctx context.Context, c completion, emit func(piece) error) (FinishReason, usage, error) {
	// offset is the length of the choice's text so far, in text_offset's
	// characters, counted token by token; the text itself may lag behind
	// while a stop string is possible.
	offset := 0
	echoed := !o.a.echo
	echo := func(ch chunk) error {
		if echoed {
			return nil
		}
		echoed = true
		p := piece{text: o.r.tok.Decode(c.prompt)}
		if o.a.params.text != nil {
			p.text = *o.a.params.text // as the client sent it
		}
		dec := o.r.tok.NewStreamDecoder(true)
		for i, lp := range ch.promptLogprobs {
			p.tokens = append(p.tokens, pieceToken{lp: lp, predicted: i > 0, offset: offset})
			offset += utf8.RuneCountInString(dec.Next(lp.Token))
		}
		offset = utf8.RuneCountInString(p.text)
		return emit(p)
	}
	if o.a.promptOnly {
		u := usage{prompt: len(c.prompt)}
		if !o.a.logprobs {
			return FinishLength, u, echo(chunk{})
		}
		// The scheduler samples at least one token; the prompt's
		// log-probabilities come with it, and it is dropped.
		_, _, err := o.r.complete(ctx, c, echo)
		return FinishLength, u, err
	}
	dec := o.r.tok.NewStreamDecoder(false)
	// complete emits a chunk for every token, so the echo goes first.
	return o.r.complete(ctx, c, func(ch chunk) error {
		if err := echo(ch); err != nil {
			return err
		}
		p := piece{text: ch.text}
		for _, lp := range ch.logprobs {
			p.tokens = append(p.tokens, pieceToken{lp: lp, predicted: true, offset: offset})
			offset += utf8.RuneCountInString(dec.Next(lp.Token))
		}
		return emit(p)
	})
}

// whole writes the completion as one JSON response.
func (o *response) whole(ctx context.Context, w http.ResponseWriter, c completion) (FinishReason, usage, error) {
	var text strings.Builder
	var lps *logprobsJSON
	if o.a.logprobs {
		lps = o.newLogprobs()
	}
	finish, u, err := o.run(ctx, c, func(p piece) error {
		text.WriteString(p.text)
		if lps != nil {
			lps.add(p.tokens)
		}
		return nil
	})
	if err != nil {
		writeHTTPError(w, err)
		return finish, u, err
	}
	s, f := text.String(), finishName(finish)
	ch := completionChoice{FinishReason: &f}
	if lps != nil {
		ch.Logprobs = lps.value()
	}
	if o.a.chat {
		ch.Message = &chatDelta{Role: "assistant", Content: &s}
	} else {
		ch.Text = &s
	}
	o.obj.Choices = []completionChoice{ch}
	o.obj.Usage = usageJSON(u)
	writeJSON(w, http.StatusOK, o.obj)
	return finish, u, nil
}

// stream writes the completion as server-sent events: a chunk per piece of
// text, one with the finish reason, one with the usage if asked, and
// "[DONE]". A chat stream's first delta carries the role.
func (o *response) stream(ctx context.Context, w http.ResponseWriter, c completion) (FinishReason, usage, error) {
	if o.a.chat {
		o.obj.Object = "chat.completion.chunk"
	}
	flusher, _ := w.(http.Flusher)
	// began is set once the event stream has begun; errors before that are
	// HTTP errors.
	began := false
	send := func(v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
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
	roleSent := false
	chunk := func(p piece, finish *string) completionObject {
		text := p.text
		ch := completionChoice{FinishReason: finish}
		if o.a.logprobs && finish == nil {
			lps := o.newLogprobs()
			lps.add(p.tokens)
			ch.Logprobs = lps.value()
		}
		if o.a.chat {
			ch.Delta = &chatDelta{}
			if finish == nil {
				ch.Delta.Content = &text
			}
			if !roleSent {
				ch.Delta.Role, roleSent = "assistant", true
			}
		} else {
			ch.Text = &text
		}
		obj := o.obj
		obj.Choices = []completionChoice{ch}
		return obj
	}
	finish, u, err := o.run(ctx, c, func(p piece) error {
		if p.text == "" && len(p.tokens) == 0 {
			return nil
		}
		return send(chunk(p, nil))
	})
	if err != nil && !began {
		writeHTTPError(w, err)
		return finish, u, err
	}
	if err != nil {
		// Headers are gone; report the error in the stream.
		send(map[string]any{"error": errorBody(err)})
		return finish, u, err
	}
	f := finishName(finish)
	if err := send(chunk(piece{}, &f)); err != nil {
		return finish, u, err
	}
	if o.a.includeUsage {
		last := o.obj
		last.Choices = []completionChoice{}
		last.Usage = usageJSON(u)
		if err := send(last); err != nil {
			return finish, u, err
		}
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
	if flusher != nil {
		flusher.Flush()
	}
	return finish, u, nil
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
