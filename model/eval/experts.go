package eval

import (
	"context"
	"fmt"
	"math"

	"github.com/moegrid/moegrid/model"
)

// ExpertLoad counts the routed token slots each expert received in each
// layer: every token fills num_experts_per_tok slots per layer.
type ExpertLoad struct {
	// Counts[layer][expert] is the number of slots the expert received.
	Counts [][]int
	// Tokens is the number of tokens routed.
	Tokens int
}

// MeasureExpertLoad routes tokens through the model in consecutive windows
// of at most contextLen tokens, so that every token is routed once, and
// counts where the gates sent them.
func MeasureExpertLoad(ctx context.Context, m *model.Model, experts model.Experts, tokens []int, contextLen int, progress func(done, total int)) (ExpertLoad, error) {
	switch {
	case len(tokens) == 0:
		return ExpertLoad{}, fmt.Errorf("%w: no tokens", ErrInput)
	case contextLen < 1:
		return ExpertLoad{}, fmt.Errorf("%w: context %d must be at least 1", ErrInput, contextLen)
	}
	cfg := &m.Config
	load := ExpertLoad{Counts: make([][]int, cfg.NumHiddenLayers)}
	for l := range load.Counts {
		load.Counts[l] = make([]int, cfg.NumLocalExperts)
	}
	for begin := 0; begin < len(tokens); begin += contextLen {
		end := min(begin+contextLen, len(tokens))
		res, err := m.Forward(ctx, experts, []model.Input{{Cache: m.NewCache(), Tokens: tokens[begin:end]}})
		if err != nil {
			return ExpertLoad{}, fmt.Errorf("eval: window of tokens [%d, %d): %w", begin, end, err)
		}
		for l, routes := range res.Routes {
			for _, rt := range routes {
				for _, e := range rt.Experts {
					load.Counts[l][e]++
				}
			}
		}
		load.Tokens += end - begin
		if progress != nil {
			progress(load.Tokens, len(tokens))
		}
	}
	return load, nil
}

// Fractions returns the share of the layer's slots each expert received.
func (e ExpertLoad) Fractions(layer int) []float64 {
	counts := e.Counts[layer]
	var total int
	for _, c := range counts {
		total += c
	}
	out := make([]float64, len(counts))
	if total == 0 {
		return out
	}
	for i, c := range counts {
		out[i] = float64(c) / float64(total)
	}
	return out
}

// MaxOverMean is the busiest expert's share over the mean share: 1 when the
// layer's load is uniform, the number of experts when one takes it all.
func (e ExpertLoad) MaxOverMean(layer int) float64 {
	fr := e.Fractions(layer)
	var hi float64
	for _, f := range fr {
		hi = max(hi, f)
	}
	return hi * float64(len(fr))
}

// Entropy is the entropy of the layer's shares over log(experts): 1 when
// the load is uniform, 0 when one expert takes it all.
func (e ExpertLoad) Entropy(layer int) float64 {
	fr := e.Fractions(layer)
	if len(fr) < 2 {
		return 1
	}
	var h float64
	for _, f := range fr {
		if f > 0 {
			h -= f * math.Log(f)
		}
	}
	return h / math.Log(float64(len(fr)))
}
