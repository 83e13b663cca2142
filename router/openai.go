package router

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The OpenAI-compatible HTTP API: /v1/models, /v1/completions and
// /v1/chat/completions, streaming with server-sent events when asked.

const maxRequestBody = 4 << 20

// stringList is a JSON string or array of strings (OpenAI's "stop").
type stringList []string

func (s *stringList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = stringList{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("want a string or an array of strings")
	}
	*s = many
	return nil
}

// samplingFields are the fields both completion endpoints share.
type samplingFields struct {
	Model       string     `json:"model"`
	MaxTokens   *int       `json:"max_tokens"`
	Temperature *float64   `json:"temperature"`
	TopP        *float64   `json:"top_p"`
	TopK        int        `json:"top_k"`
	Seed        *uint64    `json:"seed"`
	Stop        stringList `json:"stop"`
	Stream      bool       `json:"stream"`
	N           *int       `json:"n"`
	IgnoreEOS   bool       `json:"ignore_eos"`
}

func (f *samplingFields) params() (completionParams, error) {
	p := completionParams{topK: f.TopK, seed: f.Seed, stop: f.Stop, ignoreEOS: f.IgnoreEOS, temperature: 1, topP: 1}
	if f.N != nil && *f.N != 1 {
		return p, fmt.Errorf("%w: n %d: only n=1 is supported", ErrInvalid, *f.N)
	}
	if f.MaxTokens != nil {
		if *f.MaxTokens <= 0 {
			return p, fmt.Errorf("%w: max_tokens %d must be positive", ErrInvalid, *f.MaxTokens)
		}
		p.maxTokens = *f.MaxTokens
	}
	if f.Temperature != nil {
		p.temperature = *f.Temperature
	}
	if f.TopP != nil {
		p.topP = *f.TopP
	}
	return p, nil
}

type completionRequest struct {
	samplingFields
	Prompt json.RawMessage `json:"prompt"`
}

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type chatRequest struct {
	samplingFields
	Messages []chatMessage `json:"messages"`
}

func (r *Router) httpHandler(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/models", r.handleModels)
	mux.HandleFunc("POST /v1/completions", r.handleCompletions)
	mux.HandleFunc("POST /v1/chat/completions", r.handleChat)
}

func (r *Router) handleModels(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"object": "list",
		"data": []map[string]any{{
			"id": r.cfg.ModelName, "object": "model", "owned_by": "moegrid", "created": r.started.Unix(),
		}},
	})
}

func (r *Router) handleCompletions(w http.ResponseWriter, req *http.Request) {
	var body completionRequest
	if !decodeBody(w, req, &body) {
		return
	}
	p, err := body.params()
	if err == nil {
		err = parsePrompt(body.Prompt, &p)
	}
	r.serveCompletion(w, req, "text_completion", body.Stream, p, err)
}

// parsePrompt accepts a string, or an array of token ids.
func parsePrompt(raw json.RawMessage, p *completionParams) error {
	if len(raw) == 0 {
		return fmt.Errorf("%w: prompt is required", ErrInvalid)
	}
	var text string
	if err := json.Unmarshal(raw, &text); err == nil {
		p.text = &text
		return nil
	}
	var ids []int
	if err := json.Unmarshal(raw, &ids); err != nil || len(ids) == 0 {
		return fmt.Errorf("%w: prompt must be a string or a non-empty array of token ids", ErrInvalid)
	}
	p.ids = ids
	return nil
}

func (r *Router) handleChat(w http.ResponseWriter, req *http.Request) {
	var body chatRequest
	if !decodeBody(w, req, &body) {
		return
	}
	p, err := body.params()
	if err == nil {
		p.ids, err = r.chatPrompt(body.Messages)
	}
	r.serveCompletion(w, req, "chat.completion", body.Stream, p, err)
}

// chatPrompt renders messages with the Mistral instruct template,
// "<s>[INST] user [/INST] assistant</s>[INST] user [/INST]", tokenizing each
// text segment between special tokens as Hugging Face does. A system message
// is put before the first user message.
func (r *Router) chatPrompt(msgs []chatMessage) ([]int, error) {
	if len(msgs) == 0 {
		return nil, fmt.Errorf("%w: messages is empty", ErrInvalid)
	}
	var system string
	first := 0 // the index of msgs[0] in the request, for error messages
	if msgs[0].Role == "system" {
		system = msgs[0].Content
		msgs = msgs[1:]
		first = 1
	}
	if len(msgs) == 0 {
		return nil, fmt.Errorf("%w: messages has no user message", ErrInvalid)
	}
	ids := []int{r.tok.BOS()}
	for i, m := range msgs {
		want := "user"
		if i%2 == 1 {
			want = "assistant"
		}
		if m.Role != want {
			return nil, fmt.Errorf("%w: messages[%d].role is %q, want %q (user and assistant alternate, after an optional system message)", ErrInvalid, first+i, m.Role, want)
		}
		if m.Role == "assistant" {
			ids = append(ids, r.tok.Encode(m.Content, false)...)
			ids = append(ids, r.tok.EOS())
			continue
		}
		content := m.Content
		if i == 0 && system != "" {
			content = system + "\n\n" + content
		}
		ids = append(ids, r.tok.Encode("[INST] "+content+" [/INST]", false)...)
	}
	if msgs[len(msgs)-1].Role != "user" {
		return nil, fmt.Errorf("%w: the last message must be from the user", ErrInvalid)
	}
	return ids, nil
}

// serveCompletion runs a validated completion and writes it as one JSON
// response or as server-sent events.
func (r *Router) serveCompletion(w http.ResponseWriter, req *http.Request, object string, stream bool, p completionParams, err error) {
	var c completion
	if err == nil {
		c, err = r.validate(p)
	}
	if err != nil {
		r.httpError(w, err)
		return
	}
	id := fmt.Sprintf("cmpl-%x", r.seeds.Next())
	created := time.Now().Unix()
	chat := object == "chat.completion"
	choice := func(text string, finish any) map[string]any {
		ch := map[string]any{"index": 0, "finish_reason": finish}
		switch {
		case chat && finish == nil:
			ch["delta"] = map[string]any{"role": "assistant", "content": text}
		case chat:
			ch["message"] = map[string]any{"role": "assistant", "content": text}
		default:
			ch["text"] = text
		}
		return ch
	}
	envelope := func(obj string, choices ...map[string]any) map[string]any {
		return map[string]any{"id": id, "object": obj, "created": created, "model": r.cfg.ModelName, "choices": choices}
	}
	finishName := func(f FinishReason) string {
		if f == FinishLength {
			return "length"
		}
		return "stop"
	}
	usageJSON := func(u usage) map[string]int {
		return map[string]int{"prompt_tokens": u.prompt, "completion_tokens": u.completion, "total_tokens": u.prompt + u.completion}
	}

	if !stream {
		var text strings.Builder
		finish, u, err := r.complete(req.Context(), c, func(ch chunk) error {
			text.WriteString(ch.text)
			return nil
		})
		if err != nil {
			r.httpError(w, err)
			return
		}
		resp := envelope(object, choice(text.String(), finishName(finish)))
		resp["usage"] = usageJSON(u)
		writeJSON(w, http.StatusOK, resp)
		r.metrics.requests.WithLabelValues("http", codes.OK.String()).Inc()
		return
	}

	streamObj := object
	if chat {
		streamObj = "chat.completion.chunk"
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
	finish, u, err := r.complete(req.Context(), c, func(ch chunk) error {
		if ch.text == "" {
			return nil
		}
		return send(envelope(streamObj, choice(ch.text, nil)))
	})
	if err != nil && !began {
		r.httpError(w, err)
		return
	}
	if err != nil {
		// Headers are gone; report the error in the stream.
		send(map[string]any{"error": errorBody(err)})
		r.metrics.requests.WithLabelValues("http", status.Code(toStatus(err)).String()).Inc()
		return
	}
	last := envelope(streamObj, choice("", finishName(finish)))
	if chat {
		last["choices"].([]map[string]any)[0]["delta"] = map[string]any{}
		delete(last["choices"].([]map[string]any)[0], "message")
	}
	last["usage"] = usageJSON(u)
	send(last)
	fmt.Fprint(w, "data: [DONE]\n\n")
	if flusher != nil {
		flusher.Flush()
	}
	r.metrics.requests.WithLabelValues("http", codes.OK.String()).Inc()
}

func decodeBody(w http.ResponseWriter, req *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(req.Body, maxRequestBody))
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": map[string]any{
			"message": "invalid JSON body: " + err.Error(), "type": "invalid_request_error",
		}})
		return false
	}
	return true
}

func errorBody(err error) map[string]any {
	st := status.Convert(toStatus(err))
	typ := "server_error"
	if st.Code() == codes.InvalidArgument {
		typ = "invalid_request_error"
	}
	return map[string]any{"message": st.Message(), "type": typ, "code": st.Code().String()}
}

// httpError writes err with the HTTP status that matches its gRPC code.
func (r *Router) httpError(w http.ResponseWriter, err error) {
	code := status.Code(toStatus(err))
	r.metrics.requests.WithLabelValues("http", code.String()).Inc()
	httpStatus := http.StatusInternalServerError
	switch code {
	case codes.InvalidArgument:
		httpStatus = http.StatusBadRequest
	case codes.ResourceExhausted:
		httpStatus = http.StatusTooManyRequests
	case codes.Unavailable:
		httpStatus = http.StatusServiceUnavailable
	case codes.DeadlineExceeded:
		httpStatus = http.StatusGatewayTimeout
	case codes.Canceled:
		httpStatus = 499
	}
	writeJSON(w, httpStatus, map[string]any{"error": errorBody(err)})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
