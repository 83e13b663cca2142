package kernel

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// attendFloat64 is attention by its definition, in float64.
func attendFloat64(q []float32, g, d int, keys, values []float32, stride, n int, scale float64) []float64 {
	out := make([]float64, g*d)
	for h := range g {
		scores := make([]float64, n)
		mx := math.Inf(-1)
		for j := range n {
			for i := range d {
				scores[j] += float64(q[h*d+i]) * float64(keys[j*stride+i])
			}
			scores[j] *= scale
			mx = max(mx, scores[j])
		}
		var sum float64
		for j := range scores {
			scores[j] = math.Exp(scores[j] - mx)
			sum += scores[j]
		}
		for j := range n {
			for i := range d {
				out[h*d+i] += scores[j] / sum * float64(values[j*stride+i])
			}
		}
	}
	return out
}

// TestAttend checks Attend on both weighted-sum paths against attention in
// float64, over head groups, head sizes (multiples of 8 and not), strides
// and context lengths, reusing one scratch slice throughout.
func TestAttend(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var scores []float32
	for _, g := range []int{1, 2, 4} {
		for _, d := range []int{8, 12, 32, 64, 96} {
			for _, n := range []int{0, 1, 3, 100, 1000} {
				stride := d*3 + 8
				q := randomVector(rng, g*d)
				keys := randomVector(rng, max(n*stride, 1))
				values := randomVector(rng, max(n*stride, 1))
				scale := float32(1 / math.Sqrt(float64(d)))
				want := attendFloat64(q, g, d, keys, values, stride, n, float64(scale))
				for _, simd := range []bool{false, true} {
					if simd && (!useSIMD || d%32 != 0) {
						continue
					}
					out := randomVector(rng, g*d) // overwritten
					scores = attendPath(simd, out, q, g, d, keys, values, stride, n, scale, scores)
					for i, w := range want {
						if diff := math.Abs(float64(out[i]) - w); diff > 1e-5 {
							t.Fatalf("g=%d d=%d n=%d simd=%v: out[%d] = %v, want %v", g, d, n, simd, i, out[i], w)
						}
					}
				}
			}
		}
	}
}

// attendPath runs Attend with its weighted sum on the SIMD path, or redoes
// the sum on the portable path from the softmax weights Attend leaves in
// scores.
func attendPath(simd bool, out, q []float32, g, d int, keys, values []float32, stride, n int, scale float32, scores []float32) []float32 {
	if simd || n == 0 {
		return Attend(out, q, g, d, keys, values, stride, n, scale, scores)
	}
	scores = Attend(out, q, g, d, keys, values, stride, n, scale, scores)
	clear(out)
	weightedSumsGo(out, scores, n, g, d, values, stride)
	return scores
}

func randomVector(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

// BenchmarkAttend times one token's attention for one KV group at long
// context, in the tiny (2 heads of 32) and small (4 heads of 64) presets'
// shapes.
func BenchmarkAttend(b *testing.B) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, shape := range []struct{ g, d, kvHeads int }{{2, 32, 2}, {4, 64, 4}} {
		const n = 29000
		stride := shape.kvHeads * shape.d
		keys, values := randomVector(rng, n*stride), randomVector(rng, n*stride)
		q, out := randomVector(rng, shape.g*shape.d), make([]float32, shape.g*shape.d)
		var scores []float32
		b.Run(fmt.Sprintf("g=%d/d=%d/n=%d", shape.g, shape.d, n), func(b *testing.B) {
			for b.Loop() {
				scores = Attend(out, q, shape.g, shape.d, keys, values, stride, n, 0.125, scores)
			}
		})
	}
}
