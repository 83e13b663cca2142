package router

import (
	"errors"
	"testing"
)

// FuzzParseRequest feeds arbitrary bodies to both endpoints' parsers: they
// must not panic, must refuse with an ErrInvalid, and what they accept must
// be within the limits the handlers rely on.
func FuzzParseRequest(f *testing.F) {
	for _, seed := range []string{
		`{"prompt": "hi", "max_tokens": 3, "echo": true, "logprobs": 2, "stop": ["a", "b"], "seed": -4}`,
		`{"prompt": [[1, 2], "x"], "n": 2, "best_of": 2, "stream": true, "stream_options": {"include_usage": true}}`,
		`{"prompt": [1, 2, 3], "max_tokens": 0, "echo": true, "logit_bias": {"5": 0}, "presence_penalty": 0}`,
		`{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "a"}]}], "logprobs": true, "top_logprobs": 3}`,
		`{"messages": [{"role": "user", "content": null}], "max_completion_tokens": 5, "response_format": {"type": "text"}}`,
		`{"prompt": "hi", "max_tokens": "many"}`,
		`{"messages": "hi"}`,
		`[1]`,
		`{`,
		``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		check := func(endpoint string, a *apiRequest, err error) {
			if err != nil {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("%s: error %v is not ErrInvalid", endpoint, err)
				}
				return
			}
			switch {
			case a.n < 1 || a.n*max(len(a.prompts), 1) > maxChoices:
				t.Fatalf("%s: accepted n %d with %d prompts", endpoint, a.n, len(a.prompts))
			case a.logprobs && (a.topLogprobs < 0 || a.topLogprobs > MaxLogprobs || a.params.logprobs < 1):
				t.Fatalf("%s: accepted top logprobs %d (scheduler asked for %d)", endpoint, a.topLogprobs, a.params.logprobs)
			case a.promptOnly && !a.echo:
				t.Fatalf("%s: max_tokens 0 without echo", endpoint)
			case a.includeUsage && !a.stream:
				t.Fatalf("%s: include_usage without a stream", endpoint)
			}
		}
		a, err := parseCompletion(body)
		if err == nil && len(a.prompts) == 0 {
			t.Fatalf("completion accepted without a prompt")
		}
		check("completions", a, err)
		a, msgs, err := parseChat(body)
		if err == nil && len(msgs) != 0 && a == nil {
			t.Fatalf("chat: messages without a request")
		}
		check("chat", a, err)
	})
}
