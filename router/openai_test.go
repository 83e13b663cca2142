package router

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"

	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// post sends body (a string is sent as is, anything else as JSON) and
// returns the response status, content type and body.
func post(t *testing.T, url string, body any) (int, string, []byte) {
	t.Helper()
	var b []byte
	switch v := body.(type) {
	case string:
		b = []byte(v)
	default:
		var err error
		if b, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	req, err := http.NewRequestWithContext(testContext(t), http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), out
}

// completionResponse is the part of a (chat) completion response or
// stream chunk the tests read.
type completionResponse struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Model   string `json:"model"`
	Choices []struct {
		Index        int     `json:"index"`
		Text         *string `json:"text"`
		FinishReason *string `json:"finish_reason"`
		Message      *struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		Delta *struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"delta"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	} `json:"usage"`
	Error *apiError `json:"error"`
}

type apiError struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    string  `json:"code"`
}

// text is the choice's text, message content or delta content.
func (r *completionResponse) text(t *testing.T) string {
	t.Helper()
	if len(r.Choices) != 1 {
		t.Fatalf("%d choices, want 1", len(r.Choices))
	}
	c := r.Choices[0]
	switch {
	case c.Text != nil:
		return *c.Text
	case c.Message != nil:
		return c.Message.Content
	case c.Delta != nil:
		return c.Delta.Content
	}
	t.Fatalf("choice without text, message or delta")
	return ""
}

func decodeResponse(t *testing.T, b []byte) *completionResponse {
	t.Helper()
	var r completionResponse
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("response %q: %v", b, err)
	}
	return &r
}

// events parses a server-sent event stream: every event is one
// "data: ..." line and a blank line, the last is "data: [DONE]". It
// returns the events before [DONE].
func events(t *testing.T, body []byte) []*completionResponse {
	t.Helper()
	s := string(body)
	if !strings.HasSuffix(s, "data: [DONE]\n\n") {
		t.Fatalf("stream does not end with data: [DONE]: %q", s)
	}
	var out []*completionResponse
	for _, ev := range strings.Split(strings.TrimSuffix(s, "data: [DONE]\n\n"), "\n\n") {
		if ev == "" {
			continue
		}
		data, ok := strings.CutPrefix(ev, "data: ")
		if !ok || strings.Contains(data, "\n") {
			t.Fatalf("malformed event %q", ev)
		}
		out = append(out, decodeResponse(t, []byte(data)))
	}
	return out
}

func TestHTTPModels(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	type modelJSON struct {
		ID            string `json:"id"`
		Object        string `json:"object"`
		Created       int64  `json:"created"`
		OwnedBy       string `json:"owned_by"`
		MaxModelLen   int    `json:"max_model_len"`
		ContextLength int    `json:"context_length"`
	}
	want := modelJSON{ID: "tiny", Object: "model", Created: tr.r.started.Unix(), OwnedBy: "moegrid",
		MaxModelLen: fx.model.Config.MaxPositionEmbeddings, ContextLength: fx.model.Config.MaxPositionEmbeddings}
	get := func(path string, v any) int {
		t.Helper()
		resp, err := http.Get(tr.httpURL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode
	}
	var list struct {
		Object string      `json:"object"`
		Data   []modelJSON `json:"data"`
	}
	if code := get("/v1/models", &list); code != http.StatusOK || list.Object != "list" {
		t.Errorf("status %d, object %q", code, list.Object)
	}
	if diff := cmp.Diff([]modelJSON{want}, list.Data); diff != "" {
		t.Errorf("/v1/models (-want +got):\n%s", diff)
	}
	var one modelJSON
	if code := get("/v1/models/tiny", &one); code != http.StatusOK || one != want {
		t.Errorf("/v1/models/tiny: status %d, %+v", code, one)
	}
	var missing struct{ Error *apiError }
	if code := get("/v1/models/other", &missing); code != http.StatusNotFound || missing.Error == nil || missing.Error.Code != "model_not_found" {
		t.Errorf("/v1/models/other: status %d, %+v", code, missing.Error)
	}
}

func TestHTTPCompletions(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	const prompt, maxTokens = "Hello world", 6
	// The gRPC API's greedy text is the reference.
	g, err := generate(testContext(t), tr.client, &moegridv1.GenerateRequest{Prompt: &moegridv1.GenerateRequest_Text{Text: prompt}, MaxTokens: maxTokens})
	if err != nil {
		t.Fatal(err)
	}
	promptIDs := fx.tok.Encode(prompt, true)

	for _, tc := range []struct {
		name   string
		prompt any
	}{
		{"text", prompt},
		{"token ids", promptIDs},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := map[string]any{"model": "tiny", "prompt": tc.prompt, "max_tokens": maxTokens, "temperature": 0}
			code, ctype, b := post(t, tr.httpURL+"/v1/completions", body)
			if code != http.StatusOK || ctype != "application/json" {
				t.Fatalf("status %d %s: %s", code, ctype, b)
			}
			r := decodeResponse(t, b)
			if got := r.text(t); got != g.text {
				t.Errorf("text %q, want the gRPC text %q", got, g.text)
			}
			if r.Object != "text_completion" || r.Model != "tiny" || !strings.HasPrefix(r.ID, "cmpl-") {
				t.Errorf("envelope %+v", r)
			}
			if f := r.Choices[0].FinishReason; f == nil || *f != "length" {
				t.Errorf("finish_reason %v, want length", f)
			}
			if u := r.Usage; u == nil || u.PromptTokens != len(promptIDs) || u.CompletionTokens != maxTokens || u.TotalTokens != len(promptIDs)+maxTokens {
				t.Errorf("usage %+v", u)
			}

			body["stream"] = true
			code, ctype, b = post(t, tr.httpURL+"/v1/completions", body)
			if code != http.StatusOK || ctype != "text/event-stream" {
				t.Fatalf("stream: status %d %s: %s", code, ctype, b)
			}
			evs := events(t, b)
			var text strings.Builder
			for i, ev := range evs {
				text.WriteString(ev.text(t))
				last := i == len(evs)-1
				if f := ev.Choices[0].FinishReason; (f != nil) != last || (last && *f != "length") {
					t.Errorf("event %d: finish_reason %v", i, f)
				}
				if ev.Usage != nil {
					t.Errorf("event %d: usage %+v without stream_options.include_usage", i, ev.Usage)
				}
				if ev.Object != "text_completion" || ev.ID != evs[0].ID {
					t.Errorf("event %d: envelope %+v", i, ev)
				}
			}
			if text.String() != g.text {
				t.Errorf("streamed text %q, want %q", text.String(), g.text)
			}
		})
	}
	idle(t, tr.r.metrics)
}

func TestHTTPChat(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	msgs := []chatMessage{
		{Role: "system", Content: "sys"},
		{Role: "user", Content: "hi"},
		{Role: "assistant", Content: "hello"},
		{Role: "user", Content: "more"},
	}
	ids, err := tr.r.chatPrompt(msgs)
	if err != nil {
		t.Fatal(err)
	}
	var want []int
	want = append(want, fx.tok.BOS())
	want = append(want, fx.tok.Encode("[INST] sys\n\nhi [/INST]", false)...)
	want = append(want, fx.tok.Encode("hello", false)...)
	want = append(want, fx.tok.EOS())
	want = append(want, fx.tok.Encode("[INST] more [/INST]", false)...)
	if diff := cmp.Diff(want, ids); diff != "" {
		t.Fatalf("chat prompt ids (-want +got):\n%s", diff)
	}
	// OpenAI's newer name for the system role, and content as text parts.
	_, parsed, err := parseChat([]byte(`{"messages": [{"role": "developer", "content": [{"type": "text", "text": "sys"}]}, {"role": "user", "content": "hi"},
		{"role": "assistant", "content": "hello"}, {"role": "user", "content": [{"type": "text", "text": "more"}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tr.r.chatPrompt(parsed); err != nil || !cmp.Equal(want, got) {
		t.Errorf("developer message and text parts: %v, %v; want the system message's ids", got, err)
	}

	const maxTokens = 5
	g, err := generate(testContext(t), tr.client, &moegridv1.GenerateRequest{Prompt: idsPrompt(ids), MaxTokens: maxTokens})
	if err != nil {
		t.Fatal(err)
	}
	body := map[string]any{"model": "tiny", "messages": msgs, "max_tokens": maxTokens, "temperature": 0, "n": 1}
	code, _, b := post(t, tr.httpURL+"/v1/chat/completions", body)
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, b)
	}
	r := decodeResponse(t, b)
	if r.Object != "chat.completion" || r.Choices[0].Message == nil || r.Choices[0].Message.Role != "assistant" {
		t.Errorf("response %s", b)
	}
	if got := r.text(t); got != g.text {
		t.Errorf("content %q, want the gRPC text %q", got, g.text)
	}
	if u := r.Usage; u == nil || u.PromptTokens != len(ids) || u.CompletionTokens != maxTokens {
		t.Errorf("usage %+v", u)
	}

	body["stream"] = true
	code, _, b = post(t, tr.httpURL+"/v1/chat/completions", body)
	if code != http.StatusOK {
		t.Fatalf("stream: status %d: %s", code, b)
	}
	evs := events(t, b)
	var text strings.Builder
	for i, ev := range evs {
		if ev.Object != "chat.completion.chunk" || ev.Choices[0].Delta == nil || ev.Choices[0].Message != nil {
			t.Errorf("event %d is not a chunk with a delta: %+v", i, ev)
		}
		text.WriteString(ev.text(t))
	}
	if text.String() != g.text {
		t.Errorf("streamed content %q, want %q", text.String(), g.text)
	}
	if f := evs[len(evs)-1].Choices[0].FinishReason; f == nil || *f != "length" {
		t.Errorf("last finish_reason %v, want length", f)
	}
}

func TestHTTPErrors(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	user := map[string]string{"role": "user", "content": "hi"}
	chat := func(extra map[string]any) map[string]any {
		body := map[string]any{"messages": []any{user}}
		maps.Copy(body, extra)
		return body
	}
	cmpl := func(extra map[string]any) map[string]any {
		body := map[string]any{"prompt": "hi"}
		maps.Copy(body, extra)
		return body
	}
	for _, tc := range []struct {
		name    string
		path    string
		body    any
		message string // in the error message
		param   string // the error's param; "" for null
	}{
		{"bad JSON", "/v1/completions", `{"prompt": "hi",`, "invalid JSON body at byte 16", ""},
		{"trailing data", "/v1/completions", `{"prompt": "hi"} x`, "invalid JSON body", ""},
		{"empty body", "/v1/completions", ``, "body is empty", ""},
		{"not an object", "/v1/completions", `[1, 2]`, "JSON array; want an object", ""},
		{"wrong type", "/v1/completions", `{"prompt": "hi", "max_tokens": "many"}`, "max_tokens: got string, want an integer", "max_tokens"},
		{"fraction for an integer", "/v1/completions", `{"prompt": "hi", "max_tokens": 1.5}`, "max_tokens: got number 1.5, want an integer", "max_tokens"},
		{"nested wrong type", "/v1/chat/completions", `{"messages": [], "stream": true, "stream_options": {"include_usage": "yes"}}`, "stream_options.include_usage: got string, want a boolean", "stream_options.include_usage"},
		{"stream of a bad type", "/v1/completions", `{"prompt": "hi", "stream": 1}`, "stream: got number, want a boolean", "stream"},
		{"no prompt", "/v1/completions", map[string]any{}, "prompt", "prompt"},
		{"empty id array", "/v1/completions", map[string]any{"prompt": []int{}}, "prompt", "prompt"},
		{"prompt of another type", "/v1/completions", map[string]any{"prompt": 7}, "prompt", "prompt"},
		{"a bad prompt in a list", "/v1/completions", map[string]any{"prompt": []any{"a", 3}}, "prompt[1]", "prompt"},
		{"an empty prompt in a list", "/v1/completions", map[string]any{"prompt": []any{[]int{1}, []int{}}}, "prompt[1]", "prompt"},
		{"a later prompt too long", "/v1/completions", map[string]any{"prompt": []any{"a", make([]int, fx.model.Config.MaxPositionEmbeddings)}}, "prompt[1]: prompt: ", "prompt"},
		{"too many prompts", "/v1/completions", map[string]any{"prompt": make([]string, maxChoices+1)}, "65 prompts", "prompt"},
		{"n=0", "/v1/completions", cmpl(map[string]any{"n": 0}), "n 0", "n"},
		{"n too large", "/v1/completions", cmpl(map[string]any{"n": maxChoices + 1}), "n 65", "n"},
		{"prompts times n", "/v1/completions", map[string]any{"prompt": []string{"a", "b", "c"}, "n": 22}, "66 choices", "n"},
		{"best_of", "/v1/completions", cmpl(map[string]any{"best_of": 3}), "best_of 3", "best_of"},
		{"suffix", "/v1/completions", cmpl(map[string]any{"suffix": "x"}), "suffix", "suffix"},
		{"max_tokens 0 without echo", "/v1/completions", cmpl(map[string]any{"max_tokens": 0}), "max_tokens 0", "max_tokens"},
		{"negative max_tokens", "/v1/completions", cmpl(map[string]any{"max_tokens": -1, "echo": true}), "max_tokens -1", "max_tokens"},
		{"top_p", "/v1/completions", cmpl(map[string]any{"top_p": 3}), "top_p", ""},
		{"stop of a bad type", "/v1/completions", `{"prompt": "hi", "stop": 3}`, "stop: want a string or an array of strings", "stop"},
		{"presence_penalty", "/v1/completions", cmpl(map[string]any{"presence_penalty": 0.5}), "presence_penalty 0.5", "presence_penalty"},
		{"frequency_penalty", "/v1/chat/completions", chat(map[string]any{"frequency_penalty": -1}), "frequency_penalty -1", "frequency_penalty"},
		{"logit_bias", "/v1/completions", cmpl(map[string]any{"logit_bias": map[string]int{"5": -100}}), `logit_bias["5"] -100`, "logit_bias"},
		{"logprobs past the limit", "/v1/completions", cmpl(map[string]any{"logprobs": 21}), "logprobs 21", "logprobs"},
		{"top_logprobs without logprobs", "/v1/chat/completions", chat(map[string]any{"top_logprobs": 2}), "top_logprobs needs logprobs", "top_logprobs"},
		{"top_logprobs past the limit", "/v1/chat/completions", chat(map[string]any{"logprobs": true, "top_logprobs": 21}), "top_logprobs 21", "top_logprobs"},
		{"stream_options without stream", "/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": true}}`, "stream_options", "stream_options"},
		{"long user", "/v1/completions", cmpl(map[string]any{"user": strings.Repeat("u", 257)}), "user: 257 bytes", "user"},
		{"top_k", "/v1/completions", cmpl(map[string]any{"top_k": -2}), "top_k -2", "top_k"},
		{"tools", "/v1/chat/completions", chat(map[string]any{"tools": []any{map[string]any{"type": "function"}}}), "tools", "tools"},
		{"JSON mode", "/v1/chat/completions", chat(map[string]any{"response_format": map[string]any{"type": "json_object"}}), `response_format "json_object"`, "response_format"},
		{"chat max_tokens 0", "/v1/chat/completions", chat(map[string]any{"max_completion_tokens": 0}), "max_completion_tokens 0", "max_completion_tokens"},
		{"chat n=-1", "/v1/chat/completions", chat(map[string]any{"n": -1}), "n -1", "n"},
		{"messages of a bad type", "/v1/chat/completions", `{"messages": "hi"}`, "messages: got string, want an array", "messages"},
		{"no messages", "/v1/chat/completions", map[string]any{"messages": []any{}}, "messages", "messages"},
		{"a message that is no object", "/v1/chat/completions", `{"messages": [3]}`, "messages[0]: want an object", "messages[0]"},
		{"role of a bad type", "/v1/chat/completions", `{"messages": [{"role": 1, "content": "x"}]}`, "messages[0].role: want a string", "messages[0].role"},
		{"content of a bad type", "/v1/chat/completions", `{"messages": [{"role": "user", "content": 5}]}`, "messages[0].content: want a string or an array of text parts", "messages[0].content"},
		{"image content", "/v1/chat/completions", `{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}]}`, `messages[0].content[1].type "image_url"`, "messages[0].content[1].type"},
		{"only a system message", "/v1/chat/completions", map[string]any{"messages": []any{map[string]string{"role": "system", "content": "x"}}}, "messages", "messages"},
		{"assistant first", "/v1/chat/completions", map[string]any{"messages": []any{map[string]string{"role": "assistant", "content": "x"}}}, "messages[0].role", "messages[0].role"},
		{"two users, after a system message", "/v1/chat/completions", map[string]any{"messages": []any{map[string]string{"role": "system", "content": "x"}, user, user}}, "messages[2].role", "messages[2].role"},
		{"last from the assistant", "/v1/chat/completions", map[string]any{"messages": []any{user, map[string]string{"role": "assistant", "content": "x"}}}, "last message", "messages"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, stream := range []bool{false, true} {
				body := tc.body
				if m, ok := body.(map[string]any); ok {
					m["stream"] = stream
				} else if stream {
					continue
				}
				code, ctype, b := post(t, tr.httpURL+tc.path, body)
				var got struct{ Error *apiError }
				if err := json.Unmarshal(b, &got); err != nil {
					t.Fatalf("stream=%v: status %d, body %q: %v", stream, code, b, err)
				}
				if code != http.StatusBadRequest || ctype != "application/json" || got.Error == nil ||
					got.Error.Type != "invalid_request_error" || got.Error.Code != "InvalidArgument" || !strings.Contains(got.Error.Message, tc.message) {
					t.Errorf("stream=%v: status %d %s, body %s; want 400 with an invalid_request_error naming %q", stream, code, ctype, b, tc.message)
				}
				if param := got.Error.Param; (param == nil) != (tc.param == "") || (param != nil && *param != tc.param) {
					t.Errorf("stream=%v: body %s: want param %q", stream, b, tc.param)
				}
			}
		})
	}
	if n := counterValue(t, tr.r.metrics, "http", codes.InvalidArgument); n == 0 {
		t.Errorf("%v bad requests counted", n)
	}
}

// Texts and tokens are written as they are, not escaped as if for HTML.
func TestHTTPNoHTMLEscapes(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	const prompt = "a <b> & c"
	for _, stream := range []bool{false, true} {
		_, _, b := post(t, tr.httpURL+"/v1/completions", map[string]any{"prompt": prompt, "echo": true, "max_tokens": 0, "logprobs": 0, "stream": stream})
		if !strings.Contains(string(b), `"text":"a <b> & c"`) || !strings.Contains(string(b), `"<s>"`) {
			t.Errorf("stream=%v: %s; want the prompt and <s> unescaped", stream, b)
		}
	}
}

// Paths and methods the API lacks get its error shape.
func TestHTTPUnserved(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	for _, tc := range []struct {
		method, path string
		status       int
		allow        string
		message      string
	}{
		{http.MethodPost, "/v1/embeddings", http.StatusNotFound, "", "POST /v1/embeddings is not served"},
		{http.MethodGet, "/v1/completions", http.StatusMethodNotAllowed, "POST", "/v1/completions takes POST, not GET"},
		{http.MethodPost, "/v1/models", http.StatusMethodNotAllowed, "GET", "/v1/models takes GET"},
	} {
		req, err := http.NewRequestWithContext(testContext(t), tc.method, tr.httpURL+tc.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var got struct{ Error *apiError }
		err = json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if err != nil || resp.StatusCode != tc.status || resp.Header.Get("Allow") != tc.allow || got.Error == nil || !strings.Contains(got.Error.Message, tc.message) {
			t.Errorf("%s %s: status %d, Allow %q, error %+v (%v); want %d naming %q", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Allow"), got.Error, err, tc.status, tc.message)
		}
	}
}

// A body over the limit is refused with 413 whether its length is declared
// or not, and whatever its size.
func TestHTTPBodyTooLarge(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	for _, tc := range []struct {
		name    string
		size    int
		chunked bool // no Content-Length: the limit is found while reading
	}{
		{"just over", maxRequestBody + 1, false},
		{"50 MB", 50 << 20, false},
		{"chunked", maxRequestBody + 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := `{"prompt": "`
			body := io.MultiReader(strings.NewReader(prefix), io.LimitReader(repeatReader('a'), int64(tc.size-len(prefix)-2)), strings.NewReader(`"}`))
			req, err := http.NewRequestWithContext(testContext(t), http.MethodPost, tr.httpURL+"/v1/completions", body)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.chunked {
				req.ContentLength = int64(tc.size)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var got struct{ Error *apiError }
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusRequestEntityTooLarge || got.Error == nil || got.Error.Code != "request_too_large" || !strings.Contains(got.Error.Message, "4 MiB") {
				t.Errorf("status %d, error %+v; want 413 naming the limit", resp.StatusCode, got.Error)
			}
		})
	}
}

// repeatReader reads as an endless run of one byte.
type repeatReader byte

func (r repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}

// Errors found before the first event are HTTP errors, for streams too.
func TestHTTPUnavailable(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	if err := tr.stop(); err != nil {
		t.Fatal(err)
	}
	for _, stream := range []bool{false, true} {
		code, ctype, b := post(t, tr.httpURL+"/v1/completions", map[string]any{"prompt": "hi", "stream": stream})
		var got struct{ Error *apiError }
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("stream=%v: status %d, body %q: %v", stream, code, b, err)
		}
		if code != http.StatusServiceUnavailable || ctype != "application/json" || got.Error == nil || got.Error.Code != "Unavailable" {
			t.Errorf("stream=%v: status %d %s, body %s; want 503 with an error", stream, code, ctype, b)
		}
	}
}

// An error after the stream has begun is its last event, with no [DONE].
func TestHTTPStreamErrorAfterStart(t *testing.T) {
	experts := &faultyExperts{inner: fx.experts, err: fmt.Errorf("%w: experts [1] of layer 0", ErrNoLiveReplica)}
	tr := newTestRouter(t, routerOptions{experts: experts})
	b, err := json.Marshal(map[string]any{"prompt": "Hello world", "stream": true, "max_tokens": 20000, "ignore_eos": true, "temperature": 0})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(testContext(t), http.MethodPost, tr.httpURL+"/v1/completions", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	lines := bufio.NewScanner(resp.Body)
	if !lines.Scan() || !strings.HasPrefix(lines.Text(), "data: {") {
		t.Fatalf("first line %q: %v", lines.Text(), lines.Err())
	}
	experts.failing.Store(true)
	var last string
	for lines.Scan() {
		if l := lines.Text(); l != "" {
			last = l
		}
	}
	if err := lines.Err(); err != nil {
		t.Fatal(err)
	}
	var got struct{ Error *apiError }
	if err := json.Unmarshal([]byte(strings.TrimPrefix(last, "data: ")), &got); err != nil || got.Error == nil || got.Error.Code != "Unavailable" {
		t.Errorf("last event %q (%v), want an Unavailable error", last, err)
	}
	idle(t, tr.r.metrics)
}

// A client that goes away mid-stream ends every choice: the scheduler
// frees their sequences and the request counts as cancelled.
func TestHTTPStreamClientGone(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	b, err := json.Marshal(map[string]any{"prompt": "Hello world", "stream": true, "n": 3, "max_tokens": 20000, "ignore_eos": true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tr.httpURL+"/v1/completions", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	if !lines.Scan() || !strings.HasPrefix(lines.Text(), "data: {") {
		t.Fatalf("first line %q: %v", lines.Text(), lines.Err())
	}
	cancel()
	idle(t, tr.r.metrics)
	eventually(t, "the request counted as cancelled", func() error {
		if n := counterValue(t, tr.r.metrics, "http", codes.Canceled); n != 1 {
			return fmt.Errorf("%v cancelled requests", n)
		}
		return nil
	})
}
