package model

import (
	"context"
)

// Generate runs a whole sequence in one process: the prompt as one prefill
// step, then one decode step per new token until maxTokens tokens are
// generated or, unless ignoreEOS, the end-of-sequence token is. next picks
// each token from its logits [vocab]. It returns the new tokens, EOS included
// when it ended the sequence.
func (m *Model) Generate(ctx context.Context, experts Experts, prompt []int, maxTokens int, ignoreEOS bool, next func(logits []float32) int) ([]int, error) {
	cache := m.NewCache()
	var out []int
	tokens := prompt
	for len(out) < maxTokens {
		res, err := m.Forward(ctx, experts, []Input{{Cache: cache, Tokens: tokens}})
		if err != nil {
			return out, err
		}
		id := next(res.Logits[0])
		out = append(out, id)
		if id == m.Config.EOSTokenID && !ignoreEOS {
			break
		}
		tokens = []int{id}
	}
	return out, nil
}
