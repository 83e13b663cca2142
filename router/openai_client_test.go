package router

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/packages/param"
	"github.com/openai/openai-go/v3/packages/ssestream"

	"github.com/moegrid/moegrid/model"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// These tests drive the router with the official OpenAI Go client, as
// applications and evaluation harnesses use the API: a real router over
// the tiny synthetic model, on loopback.

// newOpenAIClient returns a client of tr's HTTP API that never retries, on
// its own transport, closed when the test ends.
func newOpenAIClient(t *testing.T, tr *testRouter) openai.Client {
	t.Helper()
	transport := &http.Transport{}
	t.Cleanup(transport.CloseIdleConnections)
	return openai.NewClient(
		option.WithBaseURL(tr.httpURL+"/v1/"),
		option.WithAPIKey("unused"),
		option.WithMaxRetries(0),
		option.WithHTTPClient(&http.Client{Transport: transport}),
	)
}

// wantAPIError fails the test unless err is the client's API error
// with the status and param wanted and a message naming message.
func wantAPIError(t *testing.T, err error, status int, param, message string) {
	t.Helper()
	var e *openai.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T), want an API error", err, err)
	}
	if e.StatusCode != status || e.Param != param || !strings.Contains(e.Message, message) {
		t.Errorf("error %d param %q %q; want %d, param %q, a message naming %q", e.StatusCode, e.Param, e.Message, status, param, message)
	}
}

// openaiTokenText is a token's text and bytes as the API must report them,
// from the tokenizer's piece.
func openaiTokenText(t *testing.T, id int) (string, []int64) {
	t.Helper()
	piece, ok := fx.tok.Piece(id)
	if !ok {
		t.Fatalf("token %d outside the vocabulary", id)
	}
	b := []byte(strings.ReplaceAll(piece, "▁", " "))
	var v byte
	if n, _ := fmt.Sscanf(piece, "<0x%02X>", &v); n == 1 && len(piece) == 6 {
		b = []byte{v}
	}
	if fx.tok.IsSpecial(id) {
		b = []byte(piece)
	}
	raw := make([]int64, len(b))
	for i, c := range b {
		raw[i] = int64(c)
	}
	if utf8.Valid(b) {
		return string(b), raw
	}
	s := "bytes:"
	for _, c := range b {
		s += fmt.Sprintf(`\x%02x`, c)
	}
	return s, raw
}

const logprobTolerance = 1e-4

func closeTo(a, b float64) bool { return math.Abs(a-b) <= logprobTolerance }

// checkLegacyLogprobs compares a completion's legacy logprobs with the
// tokens and log-probabilities wanted; with echo the first entry is the
// prompt's first token, whose logprob and top_logprobs are null. (The
// client decodes a null token_logprobs entry as 0 but drops the whole
// top_logprobs list for a null entry, so those are read from the raw JSON.)
func checkLegacyLogprobs(t *testing.T, got openai.CompletionChoiceLogprobs, want []TokenLogprob, echo bool, top int) {
	t.Helper()
	var raw struct {
		TokenLogprobs []*float64           `json:"token_logprobs"`
		TopLogprobs   []map[string]float64 `json:"top_logprobs"`
	}
	if err := json.Unmarshal([]byte(got.RawJSON()), &raw); err != nil {
		t.Fatal(err)
	}
	if len(got.Tokens) != len(want) || len(got.TokenLogprobs) != len(want) || len(raw.TopLogprobs) != len(want) || len(got.TextOffset) != len(want) {
		t.Fatalf("%d tokens, %d token_logprobs, %d top_logprobs, %d text_offset; want %d each", len(got.Tokens), len(got.TokenLogprobs), len(raw.TopLogprobs), len(got.TextOffset), len(want))
	}
	for i, w := range want {
		text, _ := openaiTokenText(t, w.Token)
		if got.Tokens[i] != text {
			t.Errorf("tokens[%d] %q, want %q", i, got.Tokens[i], text)
		}
		if i == 0 && echo {
			if raw.TokenLogprobs[0] != nil || raw.TopLogprobs[0] != nil {
				t.Errorf("the prompt's first token has logprob %v, top %v; want null", raw.TokenLogprobs[0], raw.TopLogprobs[0])
			}
			continue
		}
		if !closeTo(got.TokenLogprobs[i], float64(w.Logprob)) {
			t.Errorf("token_logprobs[%d] %v, want %v", i, got.TokenLogprobs[i], w.Logprob)
		}
		// The map holds the top alternatives and the chosen token.
		wantTop := map[string]float64{text: float64(w.Logprob)}
		for _, alt := range w.Top[:top] {
			s, _ := openaiTokenText(t, alt.Token)
			wantTop[s] = float64(alt.Logprob)
		}
		if diff := cmp.Diff(wantTop, raw.TopLogprobs[i], cmp.Comparer(closeTo)); diff != "" {
			t.Errorf("top_logprobs[%d] (-want +got):\n%s", i, diff)
		}
	}
	for i := 1; i < len(got.TextOffset); i++ {
		if got.TextOffset[i] < got.TextOffset[i-1] {
			t.Errorf("text_offset %v decreases at %d", got.TextOffset, i)
		}
	}
}

func TestOpenAIClientModels(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	client := newOpenAIClient(t, tr)
	ctx := testContext(t)
	page, err := client.Models.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Data) != 1 {
		t.Fatalf("%d models, want 1", len(page.Data))
	}
	m := page.Data[0]
	if m.ID != "tiny" || m.OwnedBy != "moegrid" || m.Created != tr.r.started.Unix() {
		t.Errorf("model %s", m.RawJSON())
	}
	n := fx.model.Config.MaxPositionEmbeddings
	for _, field := range []string{"max_model_len", "context_length"} {
		var v int
		if err := json.Unmarshal([]byte(m.JSON.ExtraFields[field].Raw()), &v); err != nil || v != n {
			t.Errorf("%s %q, want %d", field, m.JSON.ExtraFields[field].Raw(), n)
		}
	}
	one, err := client.Models.Get(ctx, "tiny")
	if err != nil || one.ID != "tiny" {
		t.Errorf("Get tiny: %v, %v", one, err)
	}
	_, err = client.Models.Get(ctx, "gpt-4")
	wantAPIError(t, err, http.StatusNotFound, "model", "gpt-4")
}

func TestOpenAIClientCompletions(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	client := newOpenAIClient(t, tr)
	ctx := testContext(t)
	const prompt, maxTokens, top = "Hello world", 6, 2
	promptIDs := fx.tok.Encode(prompt, true)
	gen := reference(t, fx.model, promptIDs, maxTokens, true)
	wantText := fx.tok.NewStreamDecoder(false)
	var text strings.Builder
	for _, id := range gen {
		text.WriteString(wantText.Next(id))
	}
	text.WriteString(wantText.Flush())
	wantPrompt, wantGen := wantLogprobs(t, promptIDs, gen, top)
	ignoreEOS := option.WithJSONSet("ignore_eos", true)
	base := openai.CompletionNewParams{
		Model:       "tiny",
		Prompt:      openai.CompletionNewParamsPromptUnion{OfString: openai.String(prompt)},
		MaxTokens:   openai.Int(maxTokens),
		Temperature: openai.Float(0),
	}

	t.Run("greedy", func(t *testing.T) {
		for _, p := range []openai.CompletionNewParamsPromptUnion{
			{OfString: openai.String(prompt)},
			{OfArrayOfStrings: []string{prompt}},
			{OfArrayOfTokens: toInt64s(promptIDs)},
			{OfArrayOfTokenArrays: [][]int64{toInt64s(promptIDs)}},
		} {
			params := base
			params.Prompt = p
			c, err := client.Completions.New(ctx, params, ignoreEOS)
			if err != nil {
				t.Fatal(err)
			}
			ch := c.Choices[0]
			if len(c.Choices) != 1 || ch.Text != text.String() || ch.FinishReason != openai.CompletionChoiceFinishReasonLength || ch.JSON.Logprobs.Raw() != "null" {
				t.Errorf("completion %s; want text %q, finish_reason length, logprobs null", c.RawJSON(), text.String())
			}
			if c.Usage.PromptTokens != int64(len(promptIDs)) || c.Usage.CompletionTokens != maxTokens || c.Usage.TotalTokens != int64(len(promptIDs))+maxTokens {
				t.Errorf("usage %s", c.Usage.RawJSON())
			}
			if c.Object != "text_completion" || c.Model != "tiny" || !strings.HasPrefix(c.ID, "cmpl-") {
				t.Errorf("envelope %s", c.RawJSON())
			}
		}
	})

	// lm-eval-harness scores text as echo + logprobs + max_tokens 0.
	t.Run("score the prompt", func(t *testing.T) {
		params := base
		params.MaxTokens = openai.Int(0)
		params.Echo = openai.Bool(true)
		params.Logprobs = openai.Int(top)
		c, err := client.Completions.New(ctx, params)
		if err != nil {
			t.Fatal(err)
		}
		ch := c.Choices[0]
		if ch.Text != prompt || ch.FinishReason != "length" {
			t.Errorf("text %q finish %q, want the prompt and length", ch.Text, ch.FinishReason)
		}
		if c.Usage.PromptTokens != int64(len(promptIDs)) || c.Usage.CompletionTokens != 0 {
			t.Errorf("usage %s, want %d prompt tokens and none generated", c.Usage.RawJSON(), len(promptIDs))
		}
		checkLegacyLogprobs(t, ch.Logprobs, wantPrompt, true, top)
		if got := ch.Logprobs.TextOffset; got[0] != 0 || got[len(got)-1] >= int64(utf8.RuneCountInString(prompt)) {
			t.Errorf("text_offset %v outside the prompt", got)
		}

		// Streamed: the echo with its logprobs, the finish, the usage.
		params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
		stream := client.Completions.NewStreaming(ctx, params)
		var chunks []openai.Completion
		for stream.Next() {
			chunks = append(chunks, stream.Current())
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if len(chunks) != 3 || chunks[0].Choices[0].Text != prompt || chunks[1].Choices[0].FinishReason != "length" ||
			len(chunks[2].Choices) != 0 || chunks[2].Usage.PromptTokens != int64(len(promptIDs)) || chunks[2].Usage.CompletionTokens != 0 {
			t.Fatalf("stream of %d chunks, want the echo, the finish and the usage", len(chunks))
		}
		checkLegacyLogprobs(t, chunks[0].Choices[0].Logprobs, wantPrompt, true, top)
		params.StreamOptions = openai.ChatCompletionStreamOptionsParam{}

		// Without logprobs nothing runs: the prompt comes back.
		params.Logprobs = param.Opt[int64]{}
		c, err = client.Completions.New(ctx, params)
		if err != nil || c.Choices[0].Text != prompt || c.Usage.CompletionTokens != 0 {
			t.Errorf("echo without logprobs: %v, %v", c, err)
		}
	})

	t.Run("echo and logprobs", func(t *testing.T) {
		params := base
		params.Echo = openai.Bool(true)
		params.Logprobs = openai.Int(top)
		c, err := client.Completions.New(ctx, params, ignoreEOS)
		if err != nil {
			t.Fatal(err)
		}
		ch := c.Choices[0]
		if ch.Text != prompt+text.String() {
			t.Errorf("text %q, want the prompt and %q", ch.Text, text.String())
		}
		if c.Usage.PromptTokens != int64(len(promptIDs)) || c.Usage.CompletionTokens != maxTokens {
			t.Errorf("usage %s", c.Usage.RawJSON())
		}
		checkLegacyLogprobs(t, ch.Logprobs, append(append([]TokenLogprob(nil), wantPrompt...), wantGen...), true, top)
		if off := ch.Logprobs.TextOffset[len(promptIDs)]; off != int64(utf8.RuneCountInString(prompt)) {
			t.Errorf("the first generated token's text_offset %d, want the prompt's length %d", off, utf8.RuneCountInString(prompt))
		}

		// The stream says the same, chunk by chunk.
		params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
		stream := client.Completions.NewStreaming(ctx, params, ignoreEOS)
		var streamed strings.Builder
		var lps struct {
			Tokens        []string
			TokenLogprobs []float64
			TextOffset    []int64
		}
		var usage *openai.CompletionUsage
		finishes := 0
		for stream.Next() {
			chunk := stream.Current()
			if usage != nil {
				t.Errorf("chunk after the usage: %s", chunk.RawJSON())
			}
			if chunk.JSON.Usage.Valid() {
				if len(chunk.Choices) != 0 {
					t.Errorf("usage chunk with choices: %s", chunk.RawJSON())
				}
				usage = &chunk.Usage
				continue
			}
			ch := chunk.Choices[0]
			streamed.WriteString(ch.Text)
			if ch.FinishReason != "" {
				finishes++
				continue
			}
			if streamed.Len() == len(ch.Text) && ch.Text != prompt {
				t.Errorf("first chunk %q, want the echoed prompt", ch.Text)
			}
			lps.Tokens = append(lps.Tokens, ch.Logprobs.Tokens...)
			lps.TokenLogprobs = append(lps.TokenLogprobs, ch.Logprobs.TokenLogprobs...)
			lps.TextOffset = append(lps.TextOffset, ch.Logprobs.TextOffset...)
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if streamed.String() != ch.Text || finishes != 1 {
			t.Errorf("streamed %q with %d finish reasons, want %q and one", streamed.String(), finishes, ch.Text)
		}
		if usage == nil || usage.PromptTokens != int64(len(promptIDs)) || usage.CompletionTokens != maxTokens {
			t.Errorf("stream usage %v", usage)
		}
		if diff := cmp.Diff(ch.Logprobs.Tokens, lps.Tokens); diff != "" {
			t.Errorf("streamed tokens (-whole +streamed):\n%s", diff)
		}
		if diff := cmp.Diff(ch.Logprobs.TextOffset, lps.TextOffset); diff != "" {
			t.Errorf("streamed text_offset (-whole +streamed):\n%s", diff)
		}
		if diff := cmp.Diff(ch.Logprobs.TokenLogprobs, lps.TokenLogprobs, cmp.Comparer(closeTo)); diff != "" {
			t.Errorf("streamed token_logprobs (-whole +streamed):\n%s", diff)
		}
	})

	t.Run("logprobs without echo", func(t *testing.T) {
		params := base
		params.Logprobs = openai.Int(0)
		c, err := client.Completions.New(ctx, params, ignoreEOS)
		if err != nil {
			t.Fatal(err)
		}
		checkLegacyLogprobs(t, c.Choices[0].Logprobs, wantGen, false, 0)
		if off := c.Choices[0].Logprobs.TextOffset[0]; off != 0 {
			t.Errorf("first text_offset %d, want 0", off)
		}
	})

	t.Run("stream without usage", func(t *testing.T) {
		stream := client.Completions.NewStreaming(ctx, base, ignoreEOS)
		var streamed strings.Builder
		var last openai.Completion
		for stream.Next() {
			last = stream.Current()
			if last.JSON.Usage.Valid() {
				t.Errorf("usage without stream_options.include_usage: %s", last.RawJSON())
			}
			streamed.WriteString(last.Choices[0].Text)
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if streamed.String() != text.String() || last.Choices[0].FinishReason != "length" {
			t.Errorf("streamed %q, last %s", streamed.String(), last.RawJSON())
		}
	})

	t.Run("stop", func(t *testing.T) {
		stop, before := stopIn(t, text.String())
		for _, s := range []openai.CompletionNewParamsStopUnion{
			{OfString: openai.String(stop)},
			{OfStringArray: []string{"\x00never", stop}},
		} {
			params := base
			params.Stop = s
			c, err := client.Completions.New(ctx, params, ignoreEOS)
			if err != nil {
				t.Fatal(err)
			}
			if ch := c.Choices[0]; ch.Text != before || ch.FinishReason != openai.CompletionChoiceFinishReasonStop {
				t.Errorf("stop %q: text %q, finish %q; want %q, stop", stop, ch.Text, ch.FinishReason, before)
			}
		}
	})

	t.Run("seed", func(t *testing.T) {
		params := base
		params.Temperature = openai.Float(1)
		params.Seed = openai.Int(7)
		g, err := generate(ctx, tr.client, &moegridv1.GenerateRequest{Prompt: &moegridv1.GenerateRequest_Text{Text: prompt}, MaxTokens: maxTokens, Temperature: 1, Seed: ptr(uint64(7)), IgnoreEos: true})
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			c, err := client.Completions.New(ctx, params, ignoreEOS)
			if err != nil {
				t.Fatal(err)
			}
			if c.Choices[0].Text != g.text {
				t.Errorf("seed 7: %q, want the gRPC API's %q", c.Choices[0].Text, g.text)
			}
		}
	})
}

// stopIn picks a stop string from the middle of text; it returns it and
// the text before its first occurrence.
func stopIn(t *testing.T, text string) (stop, before string) {
	t.Helper()
	runes := []rune(text)
	if len(runes) < 4 {
		t.Fatalf("text %q too short to stop in", text)
	}
	stop = string(runes[len(runes)/2 : len(runes)/2+2])
	return stop, text[:strings.Index(text, stop)]
}

func toInt64s(ids []int) []int64 {
	out := make([]int64, len(ids))
	for i, id := range ids {
		out[i] = int64(id)
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// lockedBuffer is a log destination for handlers that write from several
// goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // protected by mu
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestOpenAIClientChat(t *testing.T) {
	var logs lockedBuffer
	tr := newTestRouter(t, routerOptions{log: slog.New(slog.NewJSONHandler(&logs, nil))})
	client := newOpenAIClient(t, tr)
	ctx := testContext(t)
	const maxTokens, top = 5, 3
	ids, err := tr.r.chatPrompt([]chatMessage{{Role: "system", Content: "sys"}, {Role: "user", Content: "hi"}})
	if err != nil {
		t.Fatal(err)
	}
	gen := reference(t, fx.model, ids, maxTokens, true)
	_, wantGen := wantLogprobs(t, ids, gen, top)
	g, err := generate(ctx, tr.client, &moegridv1.GenerateRequest{Prompt: idsPrompt(ids), MaxTokens: maxTokens, IgnoreEos: true})
	if err != nil {
		t.Fatal(err)
	}
	ignoreEOS := option.WithJSONSet("ignore_eos", true)
	params := openai.ChatCompletionNewParams{
		Model:               "tiny",
		Messages:            []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("sys"), openai.UserMessage("hi")},
		MaxCompletionTokens: openai.Int(maxTokens),
		Temperature:         openai.Float(0),
		Logprobs:            openai.Bool(true),
		TopLogprobs:         openai.Int(top),
		User:                openai.String("alice@example.com"),
	}
	checkContent := func(t *testing.T, got []openai.ChatCompletionTokenLogprob) {
		t.Helper()
		if len(got) != len(wantGen) {
			t.Fatalf("%d logprobs, want %d", len(got), len(wantGen))
		}
		for i, w := range wantGen {
			text, raw := openaiTokenText(t, w.Token)
			if got[i].Token != text || !cmp.Equal(got[i].Bytes, raw) || !closeTo(got[i].Logprob, float64(w.Logprob)) || len(got[i].TopLogprobs) != top {
				t.Errorf("logprobs.content[%d] %s; want token %q, bytes %v, logprob %v, %d alternatives", i, got[i].RawJSON(), text, raw, w.Logprob, top)
				continue
			}
			for j, alt := range w.Top {
				s, b := openaiTokenText(t, alt.Token)
				if a := got[i].TopLogprobs[j]; a.Token != s || !cmp.Equal(a.Bytes, b) || !closeTo(a.Logprob, float64(alt.Logprob)) {
					t.Errorf("logprobs.content[%d].top_logprobs[%d] %s, want %q %v", i, j, a.RawJSON(), s, alt.Logprob)
				}
			}
		}
	}

	c, err := client.Chat.Completions.New(ctx, params, ignoreEOS)
	if err != nil {
		t.Fatal(err)
	}
	ch := c.Choices[0]
	if ch.Message.Content != g.text || ch.Message.Role != "assistant" || ch.FinishReason != "length" || c.Object != "chat.completion" {
		t.Errorf("completion %s; want content %q", c.RawJSON(), g.text)
	}
	if c.Usage.PromptTokens != int64(len(ids)) || c.Usage.CompletionTokens != maxTokens {
		t.Errorf("usage %s", c.Usage.RawJSON())
	}
	checkContent(t, ch.Logprobs.Content)
	if !strings.Contains(logs.String(), `"user":"alice@example.com"`) {
		t.Errorf("the user is not in the log:\n%s", logs.String())
	}

	for _, includeUsage := range []bool{false, true} {
		p := params
		if includeUsage {
			p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
		}
		stream := client.Chat.Completions.NewStreaming(ctx, p, ignoreEOS)
		var acc openai.ChatCompletionAccumulator
		var content []openai.ChatCompletionTokenLogprob
		chunks, usages := 0, 0
		for stream.Next() {
			chunk := stream.Current()
			if !acc.AddChunk(chunk) {
				t.Fatalf("the client's accumulator refused chunk %s", chunk.RawJSON())
			}
			if chunk.Object != "chat.completion.chunk" || !strings.HasPrefix(chunk.ID, "chatcmpl-") || chunk.ID != acc.ID {
				t.Errorf("chunk %s", chunk.RawJSON())
			}
			if chunk.JSON.Usage.Valid() {
				usages++
				if len(chunk.Choices) != 0 {
					t.Errorf("usage chunk with choices: %s", chunk.RawJSON())
				}
				continue
			}
			if role := chunk.Choices[0].Delta.Role; (role == "assistant") != (chunks == 0) {
				t.Errorf("chunk %d has role %q; want it in the first delta only", chunks, role)
			}
			content = append(content, chunk.Choices[0].Logprobs.Content...)
			chunks++
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		wantUsages := 0
		if includeUsage {
			wantUsages = 1
		}
		if usages != wantUsages {
			t.Errorf("include_usage %v: %d usage chunks", includeUsage, usages)
		}
		got := acc.Choices[0]
		if got.Message.Content != g.text || got.FinishReason != "length" {
			t.Errorf("include_usage %v: accumulated %q, finish %q; want %q, length", includeUsage, got.Message.Content, got.FinishReason, g.text)
		}
		if includeUsage && (acc.Usage.PromptTokens != int64(len(ids)) || acc.Usage.CompletionTokens != maxTokens) {
			t.Errorf("accumulated usage %s", acc.Usage.RawJSON())
		}
		checkContent(t, content)
	}
}

// A batch of prompts and n > 1 make one choice per prompt and n, indexed
// prompt-major, run together; with a seed, choice i samples with seed+i.
func TestOpenAIClientChoices(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	client := newOpenAIClient(t, tr)
	ctx := testContext(t)
	const maxTokens = 4
	ignoreEOS := option.WithJSONSet("ignore_eos", true)
	prompts := []string{"Hello world", "The cat sat"}
	// grpcText is the gRPC API's completion of a prompt, the reference.
	grpcText := func(p *moegridv1.GenerateRequest) string {
		t.Helper()
		p.MaxTokens, p.IgnoreEos = maxTokens, true
		g, err := generate(ctx, tr.client, p)
		if err != nil {
			t.Fatal(err)
		}
		return g.text
	}
	textPrompt := func(s string) *moegridv1.GenerateRequest {
		return &moegridv1.GenerateRequest{Prompt: &moegridv1.GenerateRequest_Text{Text: s}}
	}

	t.Run("a batch of prompts, n=2", func(t *testing.T) {
		c, err := client.Completions.New(ctx, openai.CompletionNewParams{
			Model: "tiny", Prompt: openai.CompletionNewParamsPromptUnion{OfArrayOfStrings: prompts},
			N: openai.Int(2), MaxTokens: openai.Int(maxTokens), Temperature: openai.Float(0),
		}, ignoreEOS)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Choices) != 4 {
			t.Fatalf("%d choices, want 4", len(c.Choices))
		}
		promptTokens := 0
		for i, p := range prompts {
			promptTokens += len(fx.tok.Encode(p, true))
			want := grpcText(textPrompt(p))
			for j := range 2 {
				if ch := c.Choices[2*i+j]; ch.Index != int64(2*i+j) || ch.Text != want || ch.FinishReason != "length" {
					t.Errorf("choice %d: %s; want the completion %q of prompt %d", 2*i+j, ch.RawJSON(), want, i)
				}
			}
		}
		if c.Usage.PromptTokens != int64(promptTokens) || c.Usage.CompletionTokens != 4*maxTokens {
			t.Errorf("usage %s; want each prompt counted once and every choice's tokens", c.Usage.RawJSON())
		}
	})

	t.Run("seeded choices", func(t *testing.T) {
		params := openai.CompletionNewParams{
			Model: "tiny", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String(prompts[0])},
			N: openai.Int(3), MaxTokens: openai.Int(maxTokens), Temperature: openai.Float(1), Seed: openai.Int(7),
		}
		c, err := client.Completions.New(ctx, params, ignoreEOS)
		if err != nil {
			t.Fatal(err)
		}
		for i, ch := range c.Choices {
			req := textPrompt(prompts[0])
			req.Temperature, req.Seed = 1, ptr(uint64(7+i))
			if want := grpcText(req); ch.Text != want {
				t.Errorf("choice %d: %q, want the gRPC API's %q with seed %d", i, ch.Text, want, 7+i)
			}
		}
	})

	t.Run("chat stream, n=2", func(t *testing.T) {
		ids, err := tr.r.chatPrompt([]chatMessage{{Role: "user", Content: "hi"}})
		if err != nil {
			t.Fatal(err)
		}
		want := grpcText(&moegridv1.GenerateRequest{Prompt: idsPrompt(ids)})
		stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model: "tiny", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
			N: openai.Int(2), MaxTokens: openai.Int(maxTokens), Temperature: openai.Float(0),
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
		}, ignoreEOS)
		var acc openai.ChatCompletionAccumulator
		deltas := map[int64]int{}
		for stream.Next() {
			chunk := stream.Current()
			if !acc.AddChunk(chunk) {
				t.Fatalf("the client's accumulator refused chunk %s", chunk.RawJSON())
			}
			for _, ch := range chunk.Choices {
				if (ch.Delta.Role == "assistant") != (deltas[ch.Index] == 0) {
					t.Errorf("choice %d, delta %d: role %q; want it in the first delta only", ch.Index, deltas[ch.Index], ch.Delta.Role)
				}
				deltas[ch.Index]++
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if len(acc.Choices) != 2 {
			t.Fatalf("%d choices, want 2", len(acc.Choices))
		}
		for i, ch := range acc.Choices {
			if ch.Message.Content != want || ch.FinishReason != "length" {
				t.Errorf("choice %d: %q, finish %q; want %q", i, ch.Message.Content, ch.FinishReason, want)
			}
		}
		if acc.Usage.PromptTokens != int64(len(ids)) || acc.Usage.CompletionTokens != 2*maxTokens {
			t.Errorf("usage %s", acc.Usage.RawJSON())
		}
	})
}

// Requests the router does not implement, or that are malformed, get the
// error a client can act on; fields it does not know are ignored.
func TestOpenAIClientErrors(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	client := newOpenAIClient(t, tr)
	ctx := testContext(t)
	base := openai.CompletionNewParams{Model: "tiny", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Hello")}, MaxTokens: openai.Int(2)}
	with := func(edit func(*openai.CompletionNewParams)) openai.CompletionNewParams {
		p := base
		edit(&p)
		return p
	}
	for _, tc := range []struct {
		name    string
		params  openai.CompletionNewParams
		opts    []option.RequestOption
		status  int
		param   string
		message string
	}{
		{"defaults of unsupported fields", with(func(p *openai.CompletionNewParams) {
			p.N, p.BestOf = openai.Int(1), openai.Int(1)
			p.PresencePenalty, p.FrequencyPenalty = openai.Float(0), openai.Float(0)
			p.LogitBias = map[string]int64{"5": 0}
			p.User = openai.String("bob")
		}), nil, http.StatusOK, "", ""},
		{"unknown fields", base, []option.RequestOption{option.WithJSONSet("frobnicate", map[string]any{"x": 1}), option.WithJSONSet("metadata", "y")}, http.StatusOK, "", ""},
		{"n", with(func(p *openai.CompletionNewParams) { p.N = openai.Int(0) }), nil, http.StatusBadRequest, "n", "n 0"},
		{"presence_penalty", with(func(p *openai.CompletionNewParams) { p.PresencePenalty = openai.Float(0.5) }), nil, http.StatusBadRequest, "presence_penalty", "presence_penalty"},
		{"frequency_penalty", with(func(p *openai.CompletionNewParams) { p.FrequencyPenalty = openai.Float(1) }), nil, http.StatusBadRequest, "frequency_penalty", "frequency_penalty"},
		{"logit_bias", with(func(p *openai.CompletionNewParams) { p.LogitBias = map[string]int64{"5": -100} }), nil, http.StatusBadRequest, "logit_bias", "logit_bias"},
		{"wrong type", base, []option.RequestOption{option.WithJSONSet("temperature", "hot")}, http.StatusBadRequest, "temperature", "temperature: got string, want a number"},
		{"max_tokens 0 without echo", with(func(p *openai.CompletionNewParams) { p.MaxTokens = openai.Int(0) }), nil, http.StatusBadRequest, "max_tokens", "echo"},
		{"malformed JSON", base, []option.RequestOption{option.WithRequestBody("application/json", []byte(`{"prompt": "Hello`))}, http.StatusBadRequest, "", "invalid JSON"},
		{"body over the limit", base, []option.RequestOption{option.WithJSONSet("prompt", strings.Repeat("a", maxRequestBody))}, http.StatusRequestEntityTooLarge, "", "4 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := client.Completions.New(ctx, tc.params, tc.opts...)
			if tc.status == http.StatusOK {
				if err != nil || len(c.Choices) != 1 || c.Usage.CompletionTokens == 0 {
					t.Errorf("completion %v, %v", c, err)
				}
				return
			}
			wantAPIError(t, err, tc.status, tc.param, tc.message)
			// A stream's errors before it begins are HTTP errors too.
			stream := client.Completions.NewStreaming(ctx, tc.params, tc.opts...)
			for stream.Next() {
				t.Errorf("chunk %s", stream.Current().RawJSON())
			}
			wantAPIError(t, stream.Err(), tc.status, tc.param, tc.message)
		})
	}

	chat := openai.ChatCompletionNewParams{Model: "tiny", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}, N: openai.Int(maxChoices + 1)}
	_, err := client.Chat.Completions.New(ctx, chat)
	wantAPIError(t, err, http.StatusBadRequest, "n", "n 65")
}

// An error after a stream has begun is its last event, which the client
// reports as the stream's error.
func TestOpenAIClientStreamError(t *testing.T) {
	experts := &faultyExperts{inner: fx.experts, err: fmt.Errorf("%w: experts [1] of layer 0", ErrNoLiveReplica)}
	tr := newTestRouter(t, routerOptions{experts: experts})
	client := newOpenAIClient(t, tr)
	stream := client.Chat.Completions.NewStreaming(testContext(t), openai.ChatCompletionNewParams{
		Model: "tiny", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}, MaxTokens: openai.Int(20000),
	}, option.WithJSONSet("ignore_eos", true))
	if !stream.Next() {
		t.Fatalf("no first chunk: %v", stream.Err())
	}
	experts.failing.Store(true)
	for stream.Next() {
	}
	var se *ssestream.StreamError
	if !errors.As(stream.Err(), &se) || !strings.Contains(se.Message, "Unavailable") {
		t.Errorf("stream error %v, want the router's Unavailable", stream.Err())
	}
	idle(t, tr.r.metrics)
}

// TestOpenAIClientScoreWholeContext scores prompts as perplexity runs do
// (token ids, echo, logprobs 0, max_tokens 0): a prompt may fill the
// model's context, since nothing generated is fed back, and its
// log-probabilities are the in-process model's float32 values exactly.
func TestOpenAIClientScoreWholeContext(t *testing.T) {
	const ctxLen = 8
	short := modelWith(func(c *model.Config) { c.MaxPositionEmbeddings = ctxLen })
	tr := newTestRouter(t, routerOptions{model: short})
	client := newOpenAIClient(t, tr)
	ctx := testContext(t)
	ids := fx.tok.Encode("the whole context is scored, one token after another", true)
	if len(ids) <= ctxLen {
		t.Fatalf("%d tokens, want more than the context of %d", len(ids), ctxLen)
	}
	score := func(ids []int) (*openai.Completion, error) {
		return client.Completions.New(ctx, openai.CompletionNewParams{
			Model:     "tiny",
			Prompt:    openai.CompletionNewParamsPromptUnion{OfArrayOfTokens: toInt64s(ids)},
			MaxTokens: openai.Int(0),
			Echo:      openai.Bool(true),
			Logprobs:  openai.Int(0),
		})
	}

	full := ids[:ctxLen]
	c, err := score(full)
	if err != nil {
		t.Fatal(err)
	}
	res, err := short.Forward(ctx, fx.experts, []model.Input{{Cache: short.NewCache(), Tokens: full, AllLogits: true}})
	if err != nil {
		t.Fatal(err)
	}
	V := short.Config.VocabSize
	got := c.Choices[0].Logprobs.TokenLogprobs
	if len(got) != len(full) || c.Usage.CompletionTokens != 0 {
		t.Fatalf("%d token_logprobs and %d completion tokens for a %d-token prompt; want %d and 0", len(got), c.Usage.CompletionTokens, len(full), len(full))
	}
	for i := 1; i < len(full); i++ {
		row := res.Logits[0][(i-1)*V : i*V]
		if want := model.Logprob(row, model.LogSumExp(row), full[i]); float32(got[i]) != want {
			t.Errorf("token_logprobs[%d] %v, want %v", i, got[i], want)
		}
	}

	_, err = score(ids[:ctxLen+1])
	wantAPIError(t, err, http.StatusBadRequest, "", "9 tokens leave no room in the model's context of 8")
}
