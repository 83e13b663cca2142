package router

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/model"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// wantRoutes runs the prompt and the generated tokens but the last through
// the in-process model in one step and returns the routes of every prompt
// position and, for each generated token, those of the position it was
// sampled from, per layer.
func wantRoutes(t *testing.T, prompt, gen []int) (promptRoutes, genRoutes [][]model.Route) {
	t.Helper()
	seq := append(slices.Clone(prompt), gen[:len(gen)-1]...)
	res, err := fx.model.Forward(testContext(t), fx.experts, []model.Input{{Cache: fx.model.NewCache(), Tokens: seq}})
	if err != nil {
		t.Fatal(err)
	}
	for r := range seq {
		if r < len(prompt) {
			promptRoutes = append(promptRoutes, routesOfRow(res.Routes, r))
		}
		if r >= len(prompt)-1 {
			genRoutes = append(genRoutes, routesOfRow(res.Routes, r))
		}
	}
	return promptRoutes, genRoutes
}

// equalRoutesPB reports whether one position's routes from the gRPC API
// are want exactly: the same experts in the same order, bit-equal weights.
func equalRoutesPB(got *moegridv1.TokenRoutes, want []model.Route) bool {
	if len(got.GetLayers()) != len(want) {
		return false
	}
	for l, lr := range got.GetLayers() {
		experts := make([]int, len(lr.Experts))
		for i, e := range lr.Experts {
			experts[i] = int(e)
		}
		if !slices.Equal(experts, want[l].Experts) || !slices.Equal(lr.Weights, want[l].Weights) {
			return false
		}
	}
	return true
}

// equalRoutesJSON is equalRoutesPB for the HTTP extension.
func equalRoutesJSON(got tokenRoutesJSON, token int, want []model.Route) bool {
	if got.Token != token || len(got.Layers) != len(want) {
		return false
	}
	for l, lr := range got.Layers {
		if !slices.Equal(lr.Experts, want[l].Experts) || !slices.Equal(lr.Weights, want[l].Weights) {
			return false
		}
	}
	return true
}

// TestGenerateExplain: with explain, every generated token comes with the
// routes the in-process model computes at the position it was sampled
// from, and the first message with every prompt position's, whether the
// prompt is prefilled in one step or in chunks beside other sequences.
func TestGenerateExplain(t *testing.T) {
	prompt := fx.tok.Encode("Hello world, once upon a time", true)
	const maxTokens = 6
	gen := reference(t, fx.model, prompt, maxTokens, true)
	wantPrompt, wantGen := wantRoutes(t, prompt, gen)
	chunked := DefaultSchedulerConfig()
	chunked.PrefillChunk = 2
	for _, tc := range []struct {
		name  string
		sched SchedulerConfig
	}{
		{"one step", DefaultSchedulerConfig()},
		{"chunked prefill", chunked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTestRouter(t, routerOptions{sched: tc.sched})
			ctx := testContext(t)
			// A second request shares the steps, so rows of other
			// sequences sit beside this one's.
			other := make(chan error, 1)
			go func() {
				_, err := generate(ctx, tr.client, &moegridv1.GenerateRequest{Prompt: idsPrompt(prompt[:3]), MaxTokens: maxTokens, IgnoreEos: true})
				other <- err
			}()
			stream, err := tr.client.Generate(ctx, &moegridv1.GenerateRequest{Prompt: idsPrompt(prompt), MaxTokens: maxTokens, IgnoreEos: true, Explain: true})
			if err != nil {
				t.Fatal(err)
			}
			var tokens []int
			var routes []*moegridv1.TokenRoutes
			for i := 0; ; i++ {
				msg, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if len(msg.Routes) != len(msg.TokenIds) {
					t.Errorf("message %d: %d routes for %d tokens", i, len(msg.Routes), len(msg.TokenIds))
				}
				if i == 0 {
					if len(msg.PromptRoutes) != len(prompt) {
						t.Fatalf("first message: %d prompt routes for a %d-token prompt", len(msg.PromptRoutes), len(prompt))
					}
					for p, rs := range msg.PromptRoutes {
						if !equalRoutesPB(rs, wantPrompt[p]) {
							t.Errorf("prompt token %d: routes %v, in process %v", p, rs, wantPrompt[p])
						}
					}
				} else if len(msg.PromptRoutes) != 0 {
					t.Errorf("message %d carries prompt routes", i)
				}
				for _, id := range msg.TokenIds {
					tokens = append(tokens, int(id))
				}
				routes = append(routes, msg.Routes...)
			}
			if !slices.Equal(tokens, gen) || len(routes) != len(gen) {
				t.Fatalf("tokens %v with %d routes, want %v", tokens, len(routes), gen)
			}
			for i, rs := range routes {
				if !equalRoutesPB(rs, wantGen[i]) {
					t.Errorf("token %d: routes %v, in process %v", i, rs, wantGen[i])
				}
			}
			if err := <-other; err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("not asked", func(t *testing.T) {
		tr := newTestRouter(t, routerOptions{})
		stream, err := tr.client.Generate(testContext(t), &moegridv1.GenerateRequest{Prompt: idsPrompt(prompt), MaxTokens: 2})
		if err != nil {
			t.Fatal(err)
		}
		for {
			msg, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(msg.Routes) != 0 || len(msg.PromptRoutes) != 0 {
				t.Fatalf("routes without explain: %v", msg)
			}
		}
	})
}

// TestOpenAIClientExplain: moegrid_explain leaves the OpenAI client's view
// of a completion as it is and adds moegrid_routes, one entry per
// generated token equal to the in-process model's routes, to the choice of
// a whole response and to the chunks of a stream.
func TestOpenAIClientExplain(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	client := newOpenAIClient(t, tr)
	ctx := testContext(t)
	const prompt, maxTokens = "Hello world", 5
	promptIDs := fx.tok.Encode(prompt, true)
	gen := reference(t, fx.model, promptIDs, maxTokens, true)
	_, wantGen := wantRoutes(t, promptIDs, gen)
	explain := option.WithJSONSet("moegrid_explain", true)
	ignoreEOS := option.WithJSONSet("ignore_eos", true)
	check := func(t *testing.T, got []tokenRoutesJSON) {
		t.Helper()
		if len(got) != len(gen) {
			t.Fatalf("%d moegrid_routes entries, want one for each of %d tokens", len(got), len(gen))
		}
		for i, rs := range got {
			if !equalRoutesJSON(rs, gen[i], wantGen[i]) {
				t.Errorf("moegrid_routes[%d] %+v; want token %d, routes %v", i, rs, gen[i], wantGen[i])
			}
		}
	}
	params := openai.CompletionNewParams{
		Model: "tiny", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String(prompt)},
		MaxTokens: openai.Int(maxTokens), Temperature: openai.Float(0),
	}

	t.Run("completion", func(t *testing.T) {
		plain, err := client.Completions.New(ctx, params, ignoreEOS)
		if err != nil {
			t.Fatal(err)
		}
		c, err := client.Completions.New(ctx, params, ignoreEOS, explain)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Choices) != 1 || c.Choices[0].Text != plain.Choices[0].Text || c.Choices[0].FinishReason != "length" || c.Usage.CompletionTokens != maxTokens {
			t.Fatalf("completion with moegrid_explain %s; without %s", c.RawJSON(), plain.RawJSON())
		}
		var raw struct {
			Choices []struct {
				Routes []tokenRoutesJSON `json:"moegrid_routes"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(c.RawJSON()), &raw); err != nil {
			t.Fatal(err)
		}
		check(t, raw.Choices[0].Routes)
		if _, ok := plain.Choices[0].JSON.ExtraFields["moegrid_routes"]; ok {
			t.Errorf("moegrid_routes without moegrid_explain: %s", plain.RawJSON())
		}
	})

	t.Run("chat stream", func(t *testing.T) {
		ids, err := tr.r.chatPrompt([]chatMessage{{Role: "user", Content: "hi"}})
		if err != nil {
			t.Fatal(err)
		}
		gen := reference(t, fx.model, ids, maxTokens, true)
		_, wantGen := wantRoutes(t, ids, gen)
		stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model: "tiny", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
			MaxCompletionTokens: openai.Int(maxTokens), Temperature: openai.Float(0),
		}, ignoreEOS, explain)
		var acc openai.ChatCompletionAccumulator
		var got []tokenRoutesJSON
		for stream.Next() {
			ck := stream.Current()
			acc.AddChunk(ck)
			var raw struct {
				Choices []struct {
					Routes []tokenRoutesJSON `json:"moegrid_routes"`
				} `json:"choices"`
			}
			if err := json.Unmarshal([]byte(ck.RawJSON()), &raw); err != nil {
				t.Fatal(err)
			}
			for _, c := range raw.Choices {
				got = append(got, c.Routes...)
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if len(acc.Choices) != 1 || acc.Choices[0].FinishReason != "length" {
			t.Fatalf("accumulated %+v", acc.ChatCompletion)
		}
		if len(got) != len(gen) {
			t.Fatalf("%d moegrid_routes entries in the stream, want %d", len(got), len(gen))
		}
		for i, rs := range got {
			if !equalRoutesJSON(rs, gen[i], wantGen[i]) {
				t.Errorf("streamed moegrid_routes[%d] %+v; want token %d, routes %v", i, rs, gen[i], wantGen[i])
			}
		}
	})
}

// TestExplainLimit: a sequence may explain at most MaxExplainTokens
// positions, prompt tokens plus max_tokens; past that both APIs refuse
// the request before it runs, naming the limit, and the same request
// without explain is served.
func TestExplainLimit(t *testing.T) {
	const limit = 12
	tr := newTestRouter(t, routerOptions{maxExplainTokens: limit})
	client := newOpenAIClient(t, tr)
	ctx := testContext(t)
	prompt := []int{1, 415, 3, 9, 27, 5, 8, 300}
	for _, tc := range []struct {
		name      string
		maxTokens int
		explain   bool
		ok        bool
	}{
		{"at the limit", limit - len(prompt), true, true},
		{"past the limit", limit - len(prompt) + 1, true, false},
		{"past the limit without explain", limit - len(prompt) + 1, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Run("grpc", func(t *testing.T) {
				g, err := generate(ctx, tr.client, &moegridv1.GenerateRequest{Prompt: idsPrompt(prompt), MaxTokens: uint32(tc.maxTokens), IgnoreEos: true, Explain: tc.explain})
				if tc.ok {
					if err != nil || len(g.tokens) != tc.maxTokens {
						t.Fatalf("%d tokens, %v; want %d", len(g.tokens), err, tc.maxTokens)
					}
					return
				}
				st := status.Convert(err)
				if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "at most 12 (max explain tokens)") {
					t.Errorf("got %v, want InvalidArgument naming the limit of %d", err, limit)
				}
			})
			t.Run("http", func(t *testing.T) {
				params := openai.CompletionNewParams{
					Model: "tiny", Prompt: openai.CompletionNewParamsPromptUnion{OfArrayOfTokens: toInt64s(prompt)},
					MaxTokens: openai.Int(int64(tc.maxTokens)), Temperature: openai.Float(0),
				}
				opts := []option.RequestOption{option.WithJSONSet("ignore_eos", true), option.WithJSONSet("moegrid_explain", tc.explain)}
				c, err := client.Completions.New(ctx, params, opts...)
				if tc.ok {
					if err != nil || c.Usage.CompletionTokens != int64(tc.maxTokens) {
						t.Fatalf("completion %v, %v; want %d tokens", c, err, tc.maxTokens)
					}
					return
				}
				wantAPIError(t, err, http.StatusBadRequest, "", "at most 12 (max explain tokens)")
				stream := client.Completions.NewStreaming(ctx, params, opts...)
				for stream.Next() {
					t.Errorf("chunk %s", stream.Current().RawJSON())
				}
				wantAPIError(t, stream.Err(), http.StatusBadRequest, "", "at most 12 (max explain tokens)")
			})
		})
	}
}
