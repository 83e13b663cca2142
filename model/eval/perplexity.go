package eval

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/moegrid/moegrid/model"
)

// ErrInput is wrapped by errors about the text or the options: too few
// tokens, a context or stride out of range.
var ErrInput = errors.New("eval: bad input")

// Scorer gives the log-probability of every token of a window but the
// first under the model, each conditioned on the tokens before it in the
// window: Score returns len(tokens)-1 values, the i-th for tokens[i+1]. A
// window is scored as a sequence of its own, starting at position 0.
type Scorer interface {
	Score(ctx context.Context, tokens []int) ([]float32, error)
}

// Options shape the windows of a perplexity run.
type Options struct {
	// Context is the most tokens in one window, at least 2.
	Context int
	// Stride is the number of new tokens each window scores, in
	// [1, Context-1]; 0 means Context-1, windows that share one token.
	// A smaller stride gives every token more context at the cost of more
	// windows; each token is still scored exactly once.
	Stride int
	// Progress, when set, is called after each window with the tokens
	// scored so far and the total to score.
	Progress func(done, total int)
}

// Result is the outcome of a perplexity run.
type Result struct {
	// NLL is the negative log-likelihood of the scored tokens, in nats,
	// summed in float64.
	NLL float64
	// Tokens is the number of tokens scored: every token but the first.
	Tokens int
	// Windows is the number of windows the text was scored in.
	Windows int
}

// MeanLogLikelihood is the mean log-probability of a scored token, in nats.
func (r Result) MeanLogLikelihood() float64 { return -r.NLL / float64(r.Tokens) }

// Perplexity is exp(NLL / Tokens).
func (r Result) Perplexity() float64 { return math.Exp(r.NLL / float64(r.Tokens)) }

// Window is one window of a run: the tokens tokens[Begin:End] form its
// sequence, and it scores those from Score on.
type Window struct {
	Begin, Score, End int
}

// Windows splits n tokens into the windows a run scores: every token from
// the second on is scored once, by the window whose End is at most
// Context tokens past its Begin and which scores at most Stride tokens.
func Windows(n int, o Options) ([]Window, error) {
	switch {
	case n < 2:
		return nil, fmt.Errorf("%w: %d tokens; a perplexity needs at least 2 (BOS and one token to score)", ErrInput, n)
	case o.Context < 2:
		return nil, fmt.Errorf("%w: context %d must be at least 2", ErrInput, o.Context)
	case o.Stride < 0 || o.Stride >= o.Context:
		return nil, fmt.Errorf("%w: stride %d must be in [1, %d] (context %d minus 1), or 0 for that", ErrInput, o.Stride, o.Context-1, o.Context)
	}
	stride := o.Stride
	if stride == 0 {
		stride = o.Context - 1
	}
	var ws []Window
	for next := 1; next < n; {
		end := min(next+stride, n)
		ws = append(ws, Window{Begin: max(0, end-o.Context), Score: next, End: end})
		next = end
	}
	return ws, nil
}

// Perplexity scores tokens (BOS first, as the tokenizer gives them) with s
// in the windows of o and sums the negative log-likelihood.
func Perplexity(ctx context.Context, s Scorer, tokens []int, o Options) (Result, error) {
	ws, err := Windows(len(tokens), o)
	if err != nil {
		return Result{}, err
	}
	var res Result
	for _, w := range ws {
		lps, err := s.Score(ctx, tokens[w.Begin:w.End])
		if err != nil {
			return Result{}, fmt.Errorf("eval: window of tokens [%d, %d): %w", w.Begin, w.End, err)
		}
		if want := w.End - w.Begin - 1; len(lps) != want {
			return Result{}, fmt.Errorf("eval: window of tokens [%d, %d): %d log-probabilities, want %d", w.Begin, w.End, len(lps), want)
		}
		// lps[i] is the token at w.Begin+i+1.
		for _, lp := range lps[w.Score-w.Begin-1:] {
			res.NLL -= float64(lp)
		}
		res.Tokens += w.End - w.Score
		res.Windows++
		if o.Progress != nil {
			o.Progress(res.Tokens, len(tokens)-1)
		}
	}
	return res, nil
}

// Local scores windows with a model in this process.
type Local struct {
	Model   *model.Model
	Experts model.Experts
}

var _ Scorer = Local{}

// Score runs the window as one prefill step with the logits of every
// position, and takes each next token's log-probability from them.
func (l Local) Score(ctx context.Context, tokens []int) ([]float32, error) {
	res, err := l.Model.Forward(ctx, l.Experts, []model.Input{{Cache: l.Model.NewCache(), Tokens: tokens, AllLogits: true}})
	if err != nil {
		return nil, err
	}
	V := l.Model.Config.VocabSize
	logits := res.Logits[0]
	lps := make([]float32, len(tokens)-1)
	for i := range lps {
		row := logits[i*V : (i+1)*V]
		lps[i] = model.Logprob(row, model.LogSumExp(row), tokens[i+1])
	}
	return lps, nil
}
