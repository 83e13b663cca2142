package model_test

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/moegrid/moegrid/model"
)

// BenchmarkLongContextStep times the steps a long prompt's prefill adds to
// decoding streams (issue 10): decoders alone, and decoders beside one
// prompt token after 29 000 cached positions, through all layers or one,
// on MOEGRID_BENCH_MODEL or the tiny preset. cpu-ms is the process's CPU
// time per step, which a shared machine's other load moves less than the
// wall time.
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
		// The long token through every layer, and through one, as the
		// scheduler splits it where one whole token outweighs its share.
		for _, longLayers := range []int{-1, 0, 1} {
			name := fmt.Sprintf("decoders=%d", decoders)
			step := inputs
			switch longLayers {
			case 0:
				name += "+long"
			case 1:
				name += "+long-1-layer"
			}
			if longLayers >= 0 {
				step = append(inputs[:decoders:decoders], model.Input{Cache: long, Tokens: []int{700}, Layers: longLayers})
			}
			b.Run(name, func(b *testing.B) {
				start := cpuTime(b)
				for b.Loop() {
					res, err := m.Forward(ctx, ex, step)
					if err != nil {
						b.Fatal(err)
					}
					for i, in := range step {
						n := len(in.Tokens)
						if res.Partials[i] != nil {
							n = 0
						}
						in.Cache.Truncate(in.Cache.Len() - n)
					}
				}
				b.ReportMetric((cpuTime(b)-start).Seconds()*1e3/float64(b.N), "cpu-ms")
			})
		}
	}
}

// cpuTime is the CPU time the process has used, user and system.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
