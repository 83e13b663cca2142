package kernel

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestDotPaths checks both dot product paths on lengths around the SIMD
// block: each within float32 rounding of a float64 sum.
func TestDotPaths(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 7, 8, 31, 32, 33, 63, 64, 100, 128, 1000, 4096, 14336} {
		a := make([]float32, n)
		b := make([]float32, n)
		var want, scale float64
		for i := range n {
			a[i] = float32(rng.NormFloat64())
			b[i] = float32(rng.NormFloat64())
			want += float64(a[i]) * float64(b[i])
			scale += math.Abs(float64(a[i]) * float64(b[i]))
		}
		tol := 1e-6*scale + 1e-30
		for name, got := range map[string]float32{"portable": dotGo(a, b), "simd": dotSIMD(a, b)} {
			if d := math.Abs(float64(got) - want); d > tol {
				t.Errorf("n=%d %s: %v, float64 %v (|Δ| %g > %g)", n, name, got, want, d, tol)
			}
		}
	}
}

func BenchmarkDot(b *testing.B) {
	a := make([]float32, 4096)
	c := make([]float32, 4096)
	for i := range a {
		a[i], c[i] = float32(i%7), float32(i%5)
	}
	for name, dot := range map[string]func(a, b []float32) float32{"portable": dotGo, "simd": dotSIMD} {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(a)) * 8)
			for b.Loop() {
				dot(a, c)
			}
		})
	}
}
