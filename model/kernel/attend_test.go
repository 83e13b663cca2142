package kernel

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
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
					scores = attend(simd, out, q, g, d, keys, values, stride, n, scale, scores)
					for i, w := range want {
						if diff := math.Abs(float64(out[i]) - w); diff > 2e-6 {
							t.Fatalf("g=%d d=%d n=%d simd=%v: out[%d] = %v, want %v", g, d, n, simd, i, out[i], w)
						}
					}
				}
			}
		}
	}
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
		for _, n := range []int{512, 29000} {
			stride := shape.kvHeads * shape.d
			keys, values := randomVector(rng, n*stride), randomVector(rng, n*stride)
			q, out := randomVector(rng, shape.g*shape.d), make([]float32, shape.g*shape.d)
			var scores []float32
			b.Run(fmt.Sprintf("g=%d/d=%d/n=%d", shape.g, shape.d, n), func(b *testing.B) {
				for b.Loop() {
					scores = Attend(out, q, shape.g, shape.d, keys, values, stride, n, 0.125, scores)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/position")
			})
		}
	}
}

// TestExpSub checks both exponential paths against math.Exp, over the
// range a softmax meets (scores at most the maximum) and past the clamp.
func TestExpSub(t *testing.T) {
	var x []float32
	for v := -100.0; v <= 0; v += 0.01 {
		x = append(x, float32(v))
	}
	x = append(x, 0, -1e30, float32(math.Inf(-1)))
	for _, simd := range []bool{false, true} {
		if simd && !useSIMD {
			continue
		}
		for _, mx := range []float32{0, 3.5, -20} {
			got := make([]float32, len(x))
			for i, v := range x {
				got[i] = v + mx
			}
			in := slices.Clone(got)
			sum := expSub(simd, got, mx)
			var want float64
			for i, v := range in {
				e := math.Exp(float64(v - mx)) // the float32 difference, as expSub takes it
				want += e
				if d := math.Abs(float64(got[i]) - e); d > 3e-7*e+1e-37 {
					t.Fatalf("simd=%v mx=%v: exp(%v) = %v, want %v", simd, mx, v-mx, got[i], e)
				}
			}
			if d := math.Abs(float64(sum) - want); d > 1e-5*want {
				t.Errorf("simd=%v mx=%v: sum %v, want %v", simd, mx, sum, want)
			}
		}
	}
}

// TestScoresBits checks that the fused SIMD scores give the bits of Dot
// times the scale, one (head, position) at a time, which Attend computed
// before them: the cluster's agreement with earlier runs rests on it.
func TestScoresBits(t *testing.T) {
	if !useSIMD {
		t.Skip("no AVX2")
	}
	rng := rand.New(rand.NewPCG(7, 8))
	for _, g := range []int{1, 2, 4} {
		for _, d := range []int{32, 64, 128} {
			for _, n := range []int{1, 7, 100} {
				stride := d*2 + 16
				q := randomVector(rng, g*d)
				keys := randomVector(rng, n*stride)
				scale := float32(1 / math.Sqrt(float64(d)))
				got := make([]float32, g*n)
				scoresAVX2(&got[0], &q[0], g, d, &keys[0], stride, n, scale)
				for h := range g {
					for j := range n {
						want := dotSIMD(q[h*d:(h+1)*d], keys[j*stride:j*stride+d]) * scale
						if math.Float32bits(got[h*n+j]) != math.Float32bits(want) {
							t.Fatalf("g=%d d=%d n=%d: score of head %d at %d = %v, want %v", g, d, n, h, j, got[h*n+j], want)
						}
					}
				}
			}
		}
	}
}
