package router

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// pieces reads a Generate stream to its end, keeping each message's tokens
// and text apart.
type pieces struct {
	tokens []int
	texts  []string // texts[i] came with tokens[i]; tail is text after the last token
	tail   string
	msgs   []*moegridv1.GenerateResponse // msgs[i] carried tokens[i]
	last   *moegridv1.GenerateResponse
}

func equalPB[M proto.Message](a, b M) bool { return proto.Equal(a, b) }

func readPieces(ctx context.Context, t *testing.T, c moegridv1.GenerationClient, req *moegridv1.GenerateRequest) pieces {
	t.Helper()
	stream, err := c.Generate(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var p pieces
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return p
		}
		if err != nil {
			t.Fatal(err)
		}
		switch len(msg.TokenIds) {
		case 0:
			p.tail += msg.Text
		case 1:
			p.tokens = append(p.tokens, int(msg.TokenIds[0]))
			p.texts = append(p.texts, msg.Text)
			p.msgs = append(p.msgs, msg)
		default:
			t.Fatalf("message with %d tokens", len(msg.TokenIds))
		}
		p.last = msg
	}
}

// TestGenerateResume: a request resumed after any number of the tokens an
// uninterrupted stream sent streams exactly the rest of that stream: the
// same tokens, the text the first router had not sent yet (held back for a
// stop string or a whole character), the same finish and usage, greedy and
// seeded.
func TestGenerateResume(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	ctx := testContext(t)
	prompt := fx.tok.Encode("Once upon a time", true)
	seed := uint64(11)
	base := func(edit func(*moegridv1.GenerateRequest)) *moegridv1.GenerateRequest {
		req := &moegridv1.GenerateRequest{Prompt: idsPrompt(prompt), MaxTokens: 12, IgnoreEos: true}
		edit(req)
		return req
	}
	seeded := func(r *moegridv1.GenerateRequest) { r.Temperature, r.TopK, r.Seed = 0.9, 40, &seed }
	// A stop string from the middle of the greedy text ends the stream
	// there, with text held back before it.
	greedyText := readPieces(ctx, t, tr.client, base(func(*moegridv1.GenerateRequest) {}))
	joined := strings.Join(greedyText.texts, "")
	stop := joined[len(joined)/2:][:2]
	for _, tc := range []struct {
		name string
		req  *moegridv1.GenerateRequest
	}{
		{"greedy", base(func(*moegridv1.GenerateRequest) {})},
		{"seeded", base(seeded)},
		{"seeded with logprobs and explain", base(func(r *moegridv1.GenerateRequest) { seeded(r); r.Logprobs, r.Explain = 2, true })},
		{"greedy with a stop string", base(func(r *moegridv1.GenerateRequest) { r.Stop = []string{stop} })},
		{"eos", base(func(r *moegridv1.GenerateRequest) { seeded(r); r.IgnoreEos = false })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			whole := readPieces(ctx, t, tr.client, tc.req)
			fullText := strings.Join(whole.texts, "") + whole.tail
			for n := 0; n <= len(whole.tokens); n++ {
				req := proto.Clone(tc.req).(*moegridv1.GenerateRequest)
				for _, id := range whole.tokens[:n] {
					req.ResumeTokens = append(req.ResumeTokens, uint32(id))
				}
				got := readPieces(ctx, t, tr.client, req)
				if !slices.Equal(got.tokens, whole.tokens[n:]) {
					t.Fatalf("resumed after %d: tokens %v, want %v", n, got.tokens, whole.tokens[n:])
				}
				if text := strings.Join(whole.texts[:n], "") + strings.Join(got.texts, "") + got.tail; text != fullText {
					t.Errorf("resumed after %d: text %q, uninterrupted %q", n, text, fullText)
				}
				if got.last.GetFinishReason() != whole.last.GetFinishReason() || !proto.Equal(got.last.GetUsage(), whole.last.GetUsage()) {
					t.Errorf("resumed after %d: last message %v, uninterrupted %v", n, got.last, whole.last)
				}
				for i, msg := range got.msgs {
					want := whole.msgs[n+i]
					if !slices.EqualFunc(msg.Logprobs, want.Logprobs, equalPB) || !slices.EqualFunc(msg.Routes, want.Routes, equalPB) {
						t.Errorf("resumed after %d: token %d's logprobs %v and routes %v, uninterrupted %v and %v", n, n+i, msg.Logprobs, msg.Routes, want.Logprobs, want.Routes)
					}
				}
			}
		})
	}
	t.Run("invalid", func(t *testing.T) {
		for _, tc := range []struct {
			name, field string
			resume      []uint32
		}{
			{"more than max_tokens", "resume_tokens", make([]uint32, 13)},
			{"outside the vocabulary", "resume_tokens[1]", []uint32{1, uint32(fx.model.Config.VocabSize)}},
		} {
			_, err := generate(ctx, tr.client, base(func(r *moegridv1.GenerateRequest) { r.ResumeTokens = tc.resume }))
			if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.field) {
				t.Errorf("%s: got %v, want InvalidArgument naming %q", tc.name, err, tc.field)
			}
		}
	})
}
