package model_test

import (
	"slices"
	"testing"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/kernel"
)

// TestComputeInt8 measures the opt-in int8 compute mode on GGUF files of
// the tiny checkpoint against the exact mode on the same files, on the
// reference prompts: the logits differ by the rounding of the activations
// to 8 bits (BENCHMARKS.md quotes the figures this logs), within a bound
// that a wrong kernel would break by orders of magnitude; and a batch of
// the prompts gives each prompt's logits alone, bit for bit.
func TestComputeInt8(t *testing.T) {
	ref := loadReference(t, "tiny-seed1-f32.json")
	for _, f := range []kernel.Format{kernel.Q8_0, kernel.Q4_0} {
		t.Run(string(f), func(t *testing.T) {
			l := loadWhole(t, writeGGUF(t, tinyDir(t), ggufOptions{format: f}))
			type result struct {
				logits []float32
				routes [][]model.Route
				greedy []int
			}
			runAll := func(c kernel.Compute) []result {
				if err := kernel.SetCompute(c); err != nil {
					t.Skipf("no %s compute mode on this CPU: %v", c, err)
				}
				defer kernel.SetCompute(kernel.ComputeExact)
				var rs []result
				for _, p := range ref.Prompts {
					logits, routes := run(t, l.m, l.ex, p.IDs)
					rs = append(rs, result{logits, routes, greedy(t, l, p.IDs, len(p.Greedy))})
				}
				return rs
			}
			exact, int8 := runAll(kernel.ComputeExact), runAll(kernel.ComputeInt8)
			var worst float64
			var routes, sameRoutes, tokens, sameTokens int
			for i := range exact {
				worst = max(worst, maxDiff(t, int8[i].logits, exact[i].logits))
				for layer := range exact[i].routes {
					for pos, r := range exact[i].routes[layer] {
						routes++
						if slices.Equal(int8[i].routes[layer][pos].Experts, r.Experts) {
							sameRoutes++
						}
					}
				}
				for k, tok := range exact[i].greedy {
					tokens++
					if k < len(int8[i].greedy) && int8[i].greedy[k] == tok {
						sameTokens++
					}
				}
			}
			t.Logf("compute int8 on %s: max |Δlogit| = %.3g against exact; expert pairs %d/%d identical; greedy tokens %d/%d identical", f, worst, sameRoutes, routes, sameTokens, tokens)
			if worst > 0.5 {
				t.Errorf("compute int8 on %s: max |Δlogit| = %.3g, want <= 0.5", f, worst)
			}

			if err := kernel.SetCompute(kernel.ComputeInt8); err != nil {
				t.Fatal(err)
			}
			defer kernel.SetCompute(kernel.ComputeExact)
			var inputs []model.Input
			for _, p := range ref.Prompts {
				inputs = append(inputs, model.Input{Cache: l.m.NewCache(), Tokens: p.IDs, AllLogits: true})
			}
			res, err := l.m.Forward(t.Context(), l.ex, inputs)
			if err != nil {
				t.Fatal(err)
			}
			for i := range inputs {
				if !slices.Equal(res.Logits[i], int8[i].logits) {
					t.Errorf("prompt %d: batched int8 logits differ from the prompt's alone", i)
				}
			}
		})
	}
}
