package router

import (
	"errors"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/moegrid/moegrid/model"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

func TestLogprobOf(t *testing.T) {
	// log-softmax by the definition, in float64.
	ref := func(logits []float32, id int) float32 {
		var z float64
		for _, v := range logits {
			z += math.Exp(float64(v))
		}
		return float32(float64(logits[id]) - math.Log(z))
	}
	logits := []float32{1, 3, -2, 3, 0.5, 2}
	for _, tc := range []struct {
		name    string
		logits  []float32
		tok     int
		top     int
		wantTop []int
	}{
		{"no alternatives", logits, 4, 0, nil},
		// Ties: the lower id first.
		{"top 3", logits, 2, 3, []int{1, 3, 5}},
		{"top 1 of a tie", logits, 0, 1, []int{1}},
		{"top past the vocabulary", logits, 5, 20, []int{1, 3, 5, 0, 4, 2}},
		{"equal logits", []float32{7, 7, 7, 7}, 2, 2, []int{0, 1}},
		// Shifted far up, a naive exp would overflow.
		{"large logits", []float32{1000, 999, 1001}, 1, 2, []int{2, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := logprobOf(tc.logits, tc.tok, tc.top)
			want := TokenLogprob{Token: tc.tok, Logprob: float32(float64(tc.logits[tc.tok]) - logSumExp(tc.logits))}
			if tc.name != "large logits" {
				want.Logprob = ref(tc.logits, tc.tok)
			}
			for _, id := range tc.wantTop {
				want.Top = append(want.Top, TopLogprob{Token: id, Logprob: float32(float64(tc.logits[id]) - logSumExp(tc.logits))})
			}
			if diff := cmp.Diff(want, got, cmpopts.EquateApprox(0, 1e-6)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if math.IsInf(float64(got.Logprob), 0) || math.IsNaN(float64(got.Logprob)) {
				t.Errorf("logprob %v", got.Logprob)
			}
		})
	}
}

// logSumExp is the stable log Σ exp, for the test's expectations.
func logSumExp(logits []float32) float64 {
	hi := math.Inf(-1)
	for _, v := range logits {
		hi = max(hi, float64(v))
	}
	var s float64
	for _, v := range logits {
		s += math.Exp(float64(v) - hi)
	}
	return hi + math.Log(s)
}

// wantLogprobs computes, with one Forward over the whole sequence, the
// log-probabilities a served request must report: of the prompt tokens
// after the first and of every generated token.
func wantLogprobs(t *testing.T, prompt, generated []int, top int) (promptLP, genLP []TokenLogprob) {
	t.Helper()
	seq := append(append([]int(nil), prompt...), generated[:len(generated)-1]...)
	res, err := fx.model.Forward(testContext(t), fx.experts, []model.Input{{Cache: fx.model.NewCache(), Tokens: seq, AllLogits: true}})
	if err != nil {
		t.Fatal(err)
	}
	V := fx.model.Config.VocabSize
	all := append(seq[1:], generated[len(generated)-1])
	promptLP = []TokenLogprob{{Token: prompt[0]}}
	for p, tok := range all {
		lp := logprobOf(res.Logits[0][p*V:(p+1)*V], tok, top)
		if p+1 < len(prompt) {
			promptLP = append(promptLP, lp)
		} else {
			genLP = append(genLP, lp)
		}
	}
	return promptLP, genLP
}

// Log-probabilities of the prompt (prefilled over several chunks) and of
// the generated tokens equal those of one whole-sequence Forward.
func TestSchedulerLogprobs(t *testing.T) {
	ctx := testContext(t)
	prompt := prompts(9)[8]
	const maxTokens, top = 5, 4
	want := reference(t, fx.model, prompt, maxTokens, true)
	s, met := newScheduler(SchedulerConfig{MaxBatchTokens: 16, PrefillChunk: 3, MaxRunning: 4, MaxWaiting: 4}, fx.model, fx.experts)
	runScheduler(t, s)
	if len(prompt) <= 2*3 {
		t.Fatalf("prompt of %d tokens fits in two chunks", len(prompt))
	}
	wantPrompt, wantGen := wantLogprobs(t, prompt, want, top)
	approx := cmpopts.EquateApprox(0, 1e-4)

	for _, tc := range []struct {
		name           string
		logprobs       int
		promptLogprobs bool
	}{
		{"generated", top, false},
		{"prompt", top, true},
		{"prompt without alternatives", 0, true},
		{"none", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			events, err := s.Submit(ctx, Request{Prompt: prompt, MaxTokens: maxTokens, IgnoreEOS: true, Sampler: greedy(), Logprobs: tc.logprobs, PromptLogprobs: tc.promptLogprobs})
			if err != nil {
				t.Fatal(err)
			}
			var got []int
			var gotGen, gotPrompt []TokenLogprob
			for ev := range events {
				if ev.Err != nil || ev.Finish != 0 {
					continue
				}
				got = append(got, ev.Token)
				if ev.Logprob != nil {
					gotGen = append(gotGen, *ev.Logprob)
				}
				if ev.PromptLogprobs != nil {
					if len(got) != 1 {
						t.Errorf("prompt logprobs on event %d, want the first", len(got))
					}
					gotPrompt = ev.PromptLogprobs
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("asking for logprobs changed the tokens (-want +got):\n%s", diff)
			}
			strip := func(lps []TokenLogprob) []TokenLogprob {
				out := make([]TokenLogprob, len(lps))
				for i, lp := range lps {
					out[i] = TokenLogprob{Token: lp.Token, Logprob: lp.Logprob}
					if tc.logprobs > 0 {
						out[i].Top = lp.Top
					}
				}
				return out
			}
			var wg, wp []TokenLogprob
			if tc.logprobs > 0 || tc.promptLogprobs {
				wg = strip(wantGen)
			}
			if tc.promptLogprobs {
				wp = strip(wantPrompt)
			}
			if diff := cmp.Diff(wg, gotGen, approx, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("generated tokens' logprobs (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(wp, gotPrompt, approx, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("prompt logprobs (-want +got):\n%s", diff)
			}
			for i, lp := range gotGen {
				if tc.logprobs > 0 && (len(lp.Top) != tc.logprobs || lp.Top[0].Token != lp.Token) {
					t.Errorf("token %d: greedy token %d is not first of %v", i, lp.Token, lp.Top)
				}
			}
			idle(t, met)
		})
	}

	if _, err := s.Submit(ctx, Request{Prompt: prompt, MaxTokens: 1, Sampler: greedy(), Logprobs: MaxLogprobs + 1}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Submit with logprobs %d: %v, want ErrInvalid", MaxLogprobs+1, err)
	}
}

func TestGenerateLogprobs(t *testing.T) {
	tr := newTestRouter(t, routerOptions{})
	prompt := prompts(2)[1]
	const maxTokens, top = 4, 3
	want := reference(t, fx.model, prompt, maxTokens, true)
	wantPrompt, wantGen := wantLogprobs(t, prompt, want, top)
	stream, err := tr.client.Generate(testContext(t), &moegridv1.GenerateRequest{
		Prompt: idsPrompt(prompt), MaxTokens: maxTokens, IgnoreEos: true, Logprobs: top, PromptLogprobs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	fromPB := func(pbs []*moegridv1.TokenLogprob) []TokenLogprob {
		var out []TokenLogprob
		for _, pb := range pbs {
			lp := TokenLogprob{Token: int(pb.TokenId), Logprob: pb.GetLogprob()}
			for _, tp := range pb.Top {
				lp.Top = append(lp.Top, TopLogprob{Token: int(tp.TokenId), Logprob: tp.Logprob})
			}
			out = append(out, lp)
		}
		return out
	}
	var gotGen, gotPrompt []TokenLogprob
	for i := 0; ; i++ {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if msg.FinishReason != moegridv1.FinishReason_FINISH_REASON_UNSPECIFIED {
			break
		}
		if len(msg.Logprobs) != len(msg.TokenIds) {
			t.Errorf("message %d: %d logprobs for %d tokens", i, len(msg.Logprobs), len(msg.TokenIds))
		}
		if i == 0 {
			if len(msg.PromptLogprobs) == 0 || msg.PromptLogprobs[0].Logprob != nil {
				t.Errorf("first message's prompt logprobs %v: want one per prompt token, the first without a logprob", msg.PromptLogprobs)
			}
			gotPrompt = fromPB(msg.PromptLogprobs)
		} else if len(msg.PromptLogprobs) != 0 {
			t.Errorf("message %d has prompt logprobs", i)
		}
		gotGen = append(gotGen, fromPB(msg.Logprobs)...)
	}
	approx := cmpopts.EquateApprox(0, 1e-4)
	if diff := cmp.Diff(wantGen, gotGen, approx); diff != "" {
		t.Errorf("logprobs (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantPrompt, gotPrompt, approx); diff != "" {
		t.Errorf("prompt logprobs (-want +got):\n%s", diff)
	}
}
