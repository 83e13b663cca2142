package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/sample"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// generation is a Generate stream read to its end.
type generation struct {
	tokens []int
	text   string
	last   *moegridv1.GenerateResponse
}

// generate calls Generate and reads the stream to its end.
func generate(ctx context.Context, c moegridv1.GenerationClient, req *moegridv1.GenerateRequest) (generation, error) {
	stream, err := c.Generate(ctx, req)
	if err != nil {
		return generation{}, err
	}
	var g generation
	var text strings.Builder
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if g.last == nil || g.last.FinishReason == moegridv1.FinishReason_FINISH_REASON_UNSPECIFIED {
				return g, errors.New("stream ended without a finish reason")
			}
			g.text = text.String()
			return g, nil
		}
		if err != nil {
			return g, err
		}
		if g.last != nil && g.last.FinishReason != moegridv1.FinishReason_FINISH_REASON_UNSPECIFIED {
			return g, fmt.Errorf("message %v after the last one", msg)
		}
		for _, id := range msg.TokenIds {
			g.tokens = append(g.tokens, int(id))
		}
		text.WriteString(msg.Text)
		g.last = msg
	}
}

// decodeCompletion is the text of generated tokens that continue a prompt.
func decodeCompletion(ids []int) string {
	d := fx.tok.NewStreamDecoder(false)
	var b strings.Builder
	for _, id := range ids {
		b.WriteString(d.Next(id))
	}
	b.WriteString(d.Flush())
	return b.String()
}

func idsPrompt(ids []int) *moegridv1.GenerateRequest_Ids {
	p := &moegridv1.GenerateRequest_Ids{Ids: &moegridv1.TokenIDs{}}
	for _, id := range ids {
		p.Ids.Ids = append(p.Ids.Ids, uint32(id))
	}
	return p
}

// counterValue reads the requests counter of an API and code.
func counterValue(t *testing.T, met *metrics, api string, code codes.Code) float64 {
	t.Helper()
	var m dto.Metric
	if err := met.requests.WithLabelValues(api, code.String()).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestGenerateGreedy(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	const text, maxTokens = "Hello world", 8
	prompt := fx.tok.Encode(text, true)
	want := reference(t, fx.model, prompt, maxTokens, false)
	for _, tc := range []struct {
		name string
		req  *moegridv1.GenerateRequest
	}{
		{"text", &moegridv1.GenerateRequest{Prompt: &moegridv1.GenerateRequest_Text{Text: text}, MaxTokens: maxTokens}},
		{"ids", &moegridv1.GenerateRequest{Prompt: idsPrompt(prompt), MaxTokens: maxTokens}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := generate(testContext(t), tr.client, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, g.tokens); diff != "" {
				t.Errorf("tokens differ from model.Generate (-want +got):\n%s", diff)
			}
			if g.text != decodeCompletion(want) {
				t.Errorf("text %q, want %q", g.text, decodeCompletion(want))
			}
			wantLast := &moegridv1.GenerateResponse{
				FinishReason: moegridv1.FinishReason_FINISH_REASON_LENGTH,
				Usage:        &moegridv1.Usage{PromptTokens: uint32(len(prompt)), CompletionTokens: maxTokens},
			}
			if !proto.Equal(g.last, wantLast) {
				t.Errorf("last message %v, want %v", g.last, wantLast)
			}
		})
	}
	if got := counterValue(t, tr.r.metrics, "grpc", codes.OK); got != 2 {
		t.Errorf("requests_total{grpc,OK} = %v, want 2", got)
	}
}

func TestGenerateDefaultMaxTokens(t *testing.T) {
	tr := newTestRouter(t, routerOptions{defaultMaxTokens: 3})
	g, err := generate(testContext(t), tr.client, &moegridv1.GenerateRequest{Prompt: &moegridv1.GenerateRequest_Text{Text: "a"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(g.tokens) != 3 || g.last.FinishReason != moegridv1.FinishReason_FINISH_REASON_LENGTH {
		t.Errorf("got %d tokens, finish %v; want the default 3 and LENGTH", len(g.tokens), g.last.FinishReason)
	}
}

// A stop string across a token boundary ends the completion with STOP; the
// text ends before it and the usage counts the tokens sampled.
func TestGenerateStop(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	const text = "Hello world"
	prompt := fx.tok.Encode(text, true)
	ref := reference(t, fx.model, prompt, 12, false)
	// The stop string spans the end of the 4th token's text and the start
	// of the 5th.
	before := decodeCompletion(ref[:4])
	fourth, fifth := decodeCompletion(ref[3:4]), decodeCompletion(ref[4:5])
	if len(fourth) < 2 || len(fifth) < 2 {
		t.Fatalf("tokens %q %q too short for a stop across them", fourth, fifth)
	}
	stop := fourth[len(fourth)-2:] + fifth[:2]
	full := decodeCompletion(ref)
	cut := strings.Index(full, stop)
	if cut < 0 || cut > len(before) {
		t.Fatalf("stop %q found at %d in %q", stop, cut, full)
	}

	g, err := generate(testContext(t), tr.client, &moegridv1.GenerateRequest{
		Prompt:    &moegridv1.GenerateRequest_Text{Text: text},
		MaxTokens: 12,
		Stop:      []string{"never there", stop},
	})
	if err != nil {
		t.Fatal(err)
	}
	if g.text != full[:cut] {
		t.Errorf("text %q, want %q (before the stop %q)", g.text, full[:cut], stop)
	}
	if diff := cmp.Diff(ref[:5], g.tokens); diff != "" {
		t.Errorf("tokens (-want +got):\n%s", diff)
	}
	wantLast := &moegridv1.GenerateResponse{
		FinishReason: moegridv1.FinishReason_FINISH_REASON_STOP,
		Usage:        &moegridv1.Usage{PromptTokens: uint32(len(prompt)), CompletionTokens: 5},
	}
	if !proto.Equal(g.last, wantLast) {
		t.Errorf("last message %v, want %v", g.last, wantLast)
	}
	idle(t, tr.r.metrics)
}

func TestGenerateSeeded(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	prompt := fx.tok.Encode("Once upon a time", true)
	// The parameters as the router sees them after float32 on the wire.
	sampler, err := sample.New(sample.Params{Temperature: float64(float32(0.9)), TopP: float64(float32(0.95)), TopK: 40, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	want, err := fx.model.Generate(testContext(t), fx.experts, prompt, 6, false, sampler.Next)
	if err != nil {
		t.Fatal(err)
	}
	req := &moegridv1.GenerateRequest{
		Prompt: &moegridv1.GenerateRequest_Text{Text: "Once upon a time"}, MaxTokens: 6,
		Temperature: 0.9, TopP: 0.95, TopK: 40, Seed: proto.Uint64(7),
	}
	for i := range 2 {
		g, err := generate(testContext(t), tr.client, req)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, g.tokens); diff != "" {
			t.Errorf("run %d: seeded tokens differ from the in-process sampler's (-want +got):\n%s", i, diff)
		}
	}
}

func TestGenerateInvalid(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	ctxLen := fx.model.Config.MaxPositionEmbeddings
	text := func(s string) *moegridv1.GenerateRequest_Text { return &moegridv1.GenerateRequest_Text{Text: s} }
	ok := text("hi")
	f32 := func(v float64) float32 { return float32(v) }
	// text and ids at once cannot be sent (oneof); unsigned fields cannot be
	// negative.
	for _, tc := range []struct {
		name  string
		req   *moegridv1.GenerateRequest
		field string
	}{
		{"no prompt", &moegridv1.GenerateRequest{}, "prompt"},
		{"empty text", &moegridv1.GenerateRequest{Prompt: text("")}, "text"},
		{"text too long", &moegridv1.GenerateRequest{Prompt: text(strings.Repeat("a", maxPromptBytes+1))}, "text"},
		{"empty ids", &moegridv1.GenerateRequest{Prompt: idsPrompt(nil)}, "prompt"},
		{"id past the vocabulary", &moegridv1.GenerateRequest{Prompt: idsPrompt([]int{1, fx.model.Config.VocabSize})}, "ids[1]"},
		{"id at uint32 max", &moegridv1.GenerateRequest{Prompt: &moegridv1.GenerateRequest_Ids{Ids: &moegridv1.TokenIDs{Ids: []uint32{math.MaxUint32}}}}, "ids[0]"},
		{"prompt fills the context", &moegridv1.GenerateRequest{Prompt: idsPrompt(make([]int, ctxLen))}, "prompt"},
		{"max_tokens past the context", &moegridv1.GenerateRequest{Prompt: ok, MaxTokens: uint32(ctxLen)}, "max_tokens"},
		{"temperature NaN", &moegridv1.GenerateRequest{Prompt: ok, Temperature: f32(math.NaN())}, "temperature"},
		{"temperature negative", &moegridv1.GenerateRequest{Prompt: ok, Temperature: -0.5}, "temperature"},
		{"temperature over 100", &moegridv1.GenerateRequest{Prompt: ok, Temperature: 100.5}, "temperature"},
		{"temperature infinite", &moegridv1.GenerateRequest{Prompt: ok, Temperature: f32(math.Inf(1))}, "temperature"},
		{"top_p over 1", &moegridv1.GenerateRequest{Prompt: ok, TopP: 1.5}, "top_p"},
		{"top_p negative", &moegridv1.GenerateRequest{Prompt: ok, TopP: -0.1}, "top_p"},
		{"top_p NaN", &moegridv1.GenerateRequest{Prompt: ok, TopP: f32(math.NaN())}, "top_p"},
		{"too many stop strings", &moegridv1.GenerateRequest{Prompt: ok, Stop: make([]string, maxStopStrings+1)}, "stop"},
		{"empty stop string", &moegridv1.GenerateRequest{Prompt: ok, Stop: []string{"x", ""}}, "stop[1]"},
		{"logprobs over 20", &moegridv1.GenerateRequest{Prompt: ok, Logprobs: MaxLogprobs + 1}, "logprobs"},
		{"logprobs at uint32 max", &moegridv1.GenerateRequest{Prompt: ok, Logprobs: math.MaxUint32}, "logprobs"},
		{"stop string too long", &moegridv1.GenerateRequest{Prompt: ok, Stop: []string{strings.Repeat("x", maxStopBytes+1)}}, "stop[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := generate(testContext(t), tr.client, tc.req)
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.field) {
				t.Errorf("got %v, want InvalidArgument naming %q", err, tc.field)
			}
		})
	}
}

func TestGenerateDeadline(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	ctx, cancel := context.WithTimeout(testContext(t), 200*time.Millisecond)
	defer cancel()
	_, err := generate(ctx, tr.client, &moegridv1.GenerateRequest{Prompt: &moegridv1.GenerateRequest_Text{Text: "a"}, MaxTokens: 20000, IgnoreEos: true})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DEADLINE_EXCEEDED", err)
	}
	idle(t, tr.r.metrics)
	// The server's own timer or the client's cancel, whichever reaches the
	// server first, ends the call there.
	eventually(t, "the server to count the request", func() error {
		deadline := counterValue(t, tr.r.metrics, "grpc", codes.DeadlineExceeded)
		canceled := counterValue(t, tr.r.metrics, "grpc", codes.Canceled)
		if deadline+canceled != 1 {
			return fmt.Errorf("requests_total{grpc,DeadlineExceeded} = %v, {grpc,Canceled} = %v", deadline, canceled)
		}
		return nil
	})
}

// A client that cancels mid-stream frees its sequence at once, and the
// router serves the next request.
func TestGenerateClientCancel(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	stream, err := tr.client.Generate(ctx, &moegridv1.GenerateRequest{Prompt: &moegridv1.GenerateRequest_Text{Text: "a"}, MaxTokens: 20000, IgnoreEos: true})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	for {
		if _, err := stream.Recv(); err != nil {
			if status.Code(err) != codes.Canceled {
				t.Fatalf("Recv after cancel: %v, want CANCELLED", err)
			}
			break
		}
	}
	idle(t, tr.r.metrics)
	eventually(t, "the server to see the cancel", func() error {
		if got := counterValue(t, tr.r.metrics, "grpc", codes.Canceled); got != 1 {
			return fmt.Errorf("requests_total{grpc,Canceled} = %v", got)
		}
		return nil
	})

	g, err := generate(testContext(t), tr.client, &moegridv1.GenerateRequest{Prompt: &moegridv1.GenerateRequest_Text{Text: "a"}, MaxTokens: 2})
	if err != nil || len(g.tokens) != 2 {
		t.Fatalf("next request: %d tokens, %v", len(g.tokens), err)
	}
}

func TestGenerateUnavailable(t *testing.T) {
	experts := &faultyExperts{inner: fx.experts, err: fmt.Errorf("layer 0: %w: experts [5] of layer 0 have no live, loaded holder", ErrNoLiveReplica)}
	experts.failing.Store(true)
	tr := newTestRouter(t, routerOptions{experts: experts})
	_, err := generate(testContext(t), tr.client, &moegridv1.GenerateRequest{Prompt: &moegridv1.GenerateRequest_Text{Text: "a"}, MaxTokens: 2})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "experts [5]") {
		t.Fatalf("got %v, want UNAVAILABLE naming the experts", err)
	}
	idle(t, tr.r.metrics)
}

func TestGenerateQueueFull(t *testing.T) {
	tr := newTestRouter(t, routerOptions{sched: SchedulerConfig{MaxBatchTokens: 64, PrefillChunk: 64, MaxRunning: 1, MaxWaiting: 1}, noRun: true})
	ctx := testContext(t)
	first := make(chan error, 1)
	go func() {
		_, err := generate(ctx, tr.client, &moegridv1.GenerateRequest{Prompt: &moegridv1.GenerateRequest_Text{Text: "a"}, MaxTokens: 2})
		first <- err
	}()
	eventually(t, "the first request to be queued", func() error {
		if n := len(tr.r.sched.submit); n != 1 {
			return fmt.Errorf("%d queued", n)
		}
		return nil
	})
	_, err := generate(ctx, tr.client, &moegridv1.GenerateRequest{Prompt: &moegridv1.GenerateRequest_Text{Text: "a"}, MaxTokens: 2})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("second request: %v, want RESOURCE_EXHAUSTED", err)
	}
	tr.start()
	if err := <-first; err != nil {
		t.Errorf("queued request: %v", err)
	}
}

func TestToStatus(t *testing.T) {
	nodeErr := status.Error(codes.InvalidArgument, "dim 7, want 128")
	for _, tc := range []struct {
		name string
		err  error
		code codes.Code
	}{
		{"invalid", fmt.Errorf("%w: top_p 2 must be in [0, 1]", ErrInvalid), codes.InvalidArgument},
		{"no live replica", fmt.Errorf("layer 1 experts: %w: experts [2]", ErrNoLiveReplica), codes.Unavailable},
		{"stopped", ErrStopped, codes.Unavailable},
		{"queue full", fmt.Errorf("%w: 256 requests waiting", ErrQueueFull), codes.ResourceExhausted},
		{"canceled", fmt.Errorf("layer 0 experts: %w", context.Canceled), codes.Canceled},
		{"deadline", context.DeadlineExceeded, codes.DeadlineExceeded},
		{"status passes through", status.Error(codes.Aborted, "x"), codes.Aborted},
		// The dispatcher reports a node's INVALID_ARGUMENT without wrapping
		// it: the request was the router's, not the client's.
		{"node's invalid argument", fmt.Errorf("layer 0 experts: %w", errors.Join(fmt.Errorf("node n1: %v", nodeErr))), codes.Internal},
		{"model input", fmt.Errorf("%w: input 0 has no tokens", model.ErrInput), codes.Internal},
		{"anything else", errors.New("boom"), codes.Internal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := toStatus(tc.err)
			st, ok := status.FromError(err)
			if !ok || st.Code() != tc.code {
				t.Fatalf("toStatus(%v) = %v, want code %v", tc.err, err, tc.code)
			}
			want := tc.err.Error()
			if tc.code == codes.Internal {
				want = "internal error" // the details stay in the log
			}
			if st.Message() != want && st.Code() != codes.Aborted {
				t.Errorf("message %q, want %q", st.Message(), want)
			}
		})
	}
	if err := toStatus(nil); err != nil {
		t.Errorf("toStatus(nil) = %v", err)
	}
}
