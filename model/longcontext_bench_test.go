package model_test

import (
	"fmt"
	"testing"

	"github.com/moegrid/moegrid/model"
)

// BenchmarkLongContextStep times the steps a long prompt's prefill adds to
// decoding streams (issue 10): decoders alone, and decoders beside one
// prompt token after 29 000 cached positions, on MOEGRID_BENCH_MODEL or
// the tiny preset.
func BenchmarkLongContextStep(b *testing.B) {
	m, ex := benchModel(b)
	ctx := b.Context()
	const decodeContext, longContext = 40, 29000
	long := m.NewCache()
	model.FillCache(long, longContext, 3)
	for _, decoders := range []int{4, 16} {
		inputs := make([]model.Input, decoders)
		for i := range inputs {
			inputs[i].Cache = m.NewCache()
			if _, err := m.Forward(ctx, ex, []model.Input{{Cache: inputs[i].Cache, Tokens: randomTokens(uint64(10+i), decodeContext)}}); err != nil {
				b.Fatal(err)
			}
			inputs[i].Tokens = []int{415 + i}
		}
		for _, withLong := range []bool{false, true} {
			name := fmt.Sprintf("decoders=%d", decoders)
			step := inputs
			if withLong {
				name += "+long"
				step = append(inputs[:decoders:decoders], model.Input{Cache: long, Tokens: []int{700}})
			}
			b.Run(name, func(b *testing.B) {
				for b.Loop() {
					if _, err := m.Forward(ctx, ex, step); err != nil {
						b.Fatal(err)
					}
					for _, in := range step {
						in.Cache.Truncate(in.Cache.Len() - len(in.Tokens))
					}
				}
			})
		}
	}
}
