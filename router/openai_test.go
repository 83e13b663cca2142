package router

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

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
	Message string `json:"message"`
	Type    string `json:"type"`
	Code    string `json:"code"`
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
	resp, err := http.Get(tr.httpURL + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		Object string `json:"object"`
		Data   []struct {
			ID      string `json:"id"`
			Object  string `json:"object"`
			OwnedBy string `json:"owned_by"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || got.Object != "list" || len(got.Data) != 1 || got.Data[0].ID != "tiny" || got.Data[0].Object != "model" {
		t.Errorf("status %d, body %+v", resp.StatusCode, got)
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
				if (ev.Usage != nil) != last {
					t.Errorf("event %d: usage %+v", i, ev.Usage)
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
	for _, tc := range []struct {
		name    string
		path    string
		body    any
		message string // in the error message
	}{
		{"bad JSON", "/v1/completions", `{"prompt": "hi",`, "invalid JSON"},
		{"wrong type", "/v1/completions", `{"prompt": "hi", "max_tokens": "many"}`, "invalid JSON"},
		{"no prompt", "/v1/completions", map[string]any{}, "prompt"},
		{"empty id array", "/v1/completions", map[string]any{"prompt": []int{}}, "prompt"},
		{"prompt of another type", "/v1/completions", map[string]any{"prompt": 7}, "prompt"},
		{"n=2", "/v1/completions", map[string]any{"prompt": "hi", "n": 2}, "n 2"},
		{"max_tokens 0", "/v1/completions", map[string]any{"prompt": "hi", "max_tokens": 0}, "max_tokens"},
		{"top_p", "/v1/completions", map[string]any{"prompt": "hi", "top_p": 3}, "top_p"},
		{"stop of a bad type", "/v1/completions", `{"prompt": "hi", "stop": 3}`, "invalid JSON"},
		{"chat n=2", "/v1/chat/completions", map[string]any{"messages": []any{user}, "n": 2}, "n 2"},
		{"no messages", "/v1/chat/completions", map[string]any{"messages": []any{}}, "messages"},
		{"only a system message", "/v1/chat/completions", map[string]any{"messages": []any{map[string]string{"role": "system", "content": "x"}}}, "messages"},
		{"assistant first", "/v1/chat/completions", map[string]any{"messages": []any{map[string]string{"role": "assistant", "content": "x"}}}, "messages[0].role"},
		{"two users, after a system message", "/v1/chat/completions", map[string]any{"messages": []any{map[string]string{"role": "system", "content": "x"}, user, user}}, "messages[2].role"},
		{"last from the assistant", "/v1/chat/completions", map[string]any{"messages": []any{user, map[string]string{"role": "assistant", "content": "x"}}}, "last message"},
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
					got.Error.Type != "invalid_request_error" || !strings.Contains(got.Error.Message, tc.message) {
					t.Errorf("stream=%v: status %d %s, body %s; want 400 with an invalid_request_error naming %q", stream, code, ctype, b, tc.message)
				}
			}
		})
	}
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
