package router

import (
	"github.com/moegrid/moegrid/model"
)

// MaxLogprobs is the most alternatives a request may ask for with each
// token's log-probability, as in the OpenAI API.
const MaxLogprobs = 20

// TokenLogprob is the log-probability of one token under the model's
// distribution at its position, and the most likely tokens there.
type TokenLogprob struct {
	Token   int
	Logprob float32
	// Top are the most likely tokens at the position, most likely first
	// (the lower id first on ties); as many as the request asked for.
	Top []TopLogprob
}

// TopLogprob is one of the most likely tokens at a position.
type TopLogprob struct {
	Token   int
	Logprob float32
}

// logprobOf returns the log-probability of tok under logits [vocab] and the
// top most likely tokens. The distribution is the model's own: log-softmax of
// the raw logits (model.LogSumExp), before temperature or any filter, which
// is what the OpenAI API and vLLM report.
func logprobOf(logits []float32, tok, top int) TokenLogprob {
	logZ := model.LogSumExp(logits)
	tl := TokenLogprob{Token: tok, Logprob: model.Logprob(logits, logZ, tok)}
	if top == 0 {
		return tl
	}
	// Insertion into a short sorted list: top is at most MaxLogprobs, and
	// past the first few logits almost every one is rejected by one
	// comparison with the smallest kept.
	best := make([]int, 0, top)
	for id, v := range logits {
		if len(best) == top && v <= logits[best[top-1]] {
			continue
		}
		i := len(best)
		for i > 0 && v > logits[best[i-1]] {
			i--
		}
		if len(best) < top {
			best = append(best, 0)
		}
		copy(best[i+1:], best[i:len(best)-1])
		best[i] = id
	}
	tl.Top = make([]TopLogprob, len(best))
	for i, id := range best {
		tl.Top[i] = TopLogprob{Token: id, Logprob: model.Logprob(logits, logZ, id)}
	}
	return tl
}
