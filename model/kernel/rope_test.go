package kernel_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/moegrid/moegrid/model/kernel"
)

func TestRoPEFreqs(t *testing.T) {
	for _, tc := range []struct {
		d     int
		theta float64
	}{
		{128, 1e6}, // Mixtral
		{128, 1e4}, // Llama 2
		{64, 1e6},  // the small preset
		{32, 1e6},  // the tiny preset
		{4, 1e4},
		{2, 1e6},
	} {
		t.Run(fmt.Sprintf("d=%d/theta=%g", tc.d, tc.theta), func(t *testing.T) {
			inv := kernel.RoPEFreqs(tc.d, tc.theta)
			if len(inv) != tc.d/2 {
				t.Fatalf("len = %d, want %d", len(inv), tc.d/2)
			}
			if inv[0] != 1 {
				t.Errorf("inv[0] = %v, want 1", inv[0])
			}
			for i, got := range inv {
				want := math.Pow(tc.theta, -float64(2*i)/float64(tc.d))
				if math.Abs(float64(got)-want) > 2e-7*want {
					t.Errorf("inv[%d] = %v, want %v", i, got, want)
				}
				if i > 0 && got >= inv[i-1] {
					t.Errorf("inv[%d] = %v is not below inv[%d] = %v", i, got, i-1, inv[i-1])
				}
			}
		})
	}
	if got, want := kernel.RoPEFreqs(4, 1e4), []float32{1, 0.01}; !slices.Equal(got, want) {
		t.Errorf("RoPEFreqs(4, 1e4) = %v, want %v", got, want)
	}
}

func TestRoPEAngles(t *testing.T) {
	inv := kernel.RoPEFreqs(128, 1e6)
	cos, sin := make([]float32, len(inv)), make([]float32, len(inv))
	for _, pos := range []int{0, 1, 7, 4095, 32767} {
		kernel.RoPEAngles(cos, sin, inv, pos)
		for i, f := range inv {
			// The angle is rounded to float32 first, as in the reference.
			a := float64(float32(pos) * f)
			if cos[i] != float32(math.Cos(a)) || sin[i] != float32(math.Sin(a)) {
				t.Errorf("pos %d, i %d: (cos, sin) = (%v, %v), want (%v, %v)", pos, i, cos[i], sin[i], math.Cos(a), math.Sin(a))
			}
			if pos == 0 && (cos[i] != 1 || sin[i] != 0) {
				t.Errorf("pos 0, i %d: (cos, sin) = (%v, %v), want (1, 0)", i, cos[i], sin[i])
			}
		}
	}
}

// rope64 rotates heads [heads, d] of x in float64 at position pos, from the
// definition: element i pairs with i + d/2, angle pos·theta^(-2i/d).
func rope64(x []float32, heads, d int, theta float64, pos int) []float64 {
	out := make([]float64, len(x))
	half := d / 2
	for h := range heads {
		for i := range half {
			a := float64(pos) * math.Pow(theta, -float64(2*i)/float64(d))
			c, s := math.Cos(a), math.Sin(a)
			x1, x2 := float64(x[h*d+i]), float64(x[h*d+i+half])
			out[h*d+i] = x1*c - x2*s
			out[h*d+i+half] = x2*c + x1*s
		}
	}
	return out
}

func rope(x []float32, heads, d int, theta float64, pos int) []float32 {
	inv := kernel.RoPEFreqs(d, theta)
	cos, sin := make([]float32, d/2), make([]float32, d/2)
	kernel.RoPEAngles(cos, sin, inv, pos)
	y := slices.Clone(x)
	kernel.RoPE(y, heads, d, cos, sin)
	return y
}

func TestRoPEMatchesFloat64(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	const heads, d, theta = 4, 32, 1e6
	x := randFloats(rng, heads*d)
	for _, pos := range []int{0, 1, 2, 3, 10, 40, 100} {
		got := rope(x, heads, d, theta, pos)
		want := rope64(x, heads, d, theta, pos)
		// The float32 angle pos·inv[i] is off by up to ~pos·1e-7 rad.
		tol := 1e-6 + 4e-7*float64(pos)
		for i := range got {
			if diff := math.Abs(float64(got[i]) - want[i]); diff > tol {
				t.Errorf("pos %d: x'[%d] = %v, want %v (|Δ| %.3g)", pos, i, got[i], want[i], diff)
			}
		}
	}
}

// TestRoPEPosition0 checks that position 0 is the identity, bit for bit.
func TestRoPEPosition0(t *testing.T) {
	x := randFloats(rand.New(rand.NewPCG(23, 24)), 3*16)
	if d := cmp.Diff(bits(x), bits(rope(x, 3, 16, 1e6, 0))); d != "" {
		t.Errorf("position 0 changed x:\n%s", d)
	}
}

// TestRoPEPairing feeds unit vectors through RoPE: element i must mix with
// element i + d/2 only (the rotate-half layout, not interleaved pairs), in
// its own head only.
func TestRoPEPairing(t *testing.T) {
	const heads, d, half, pos = 2, 8, 4, 3
	inv := kernel.RoPEFreqs(d, 1e4)
	cos, sin := make([]float32, half), make([]float32, half)
	kernel.RoPEAngles(cos, sin, inv, pos)
	for h := range heads {
		for j := range d {
			x := make([]float32, heads*d)
			x[h*d+j] = 1
			kernel.RoPE(x, heads, d, cos, sin)
			want := make([]float32, heads*d)
			if i := j; i < half {
				want[h*d+i] = cos[i]      // x'[i] = x[i]·cos
				want[h*d+i+half] = sin[i] // x'[i+d/2] = x[i]·sin
			} else {
				i := j - half
				want[h*d+i] = -sin[i]     // x'[i] = −x[i+d/2]·sin
				want[h*d+i+half] = cos[i] // x'[i+d/2] = x[i+d/2]·cos
			}
			if diff := cmp.Diff(want, x); diff != "" {
				t.Errorf("unit vector at head %d, element %d (-want +got):\n%s", h, j, diff)
			}
		}
	}
}

// TestRoPERelative checks what rotary embeddings are for: the score of a
// rotated query and key depends only on their distance.
func TestRoPERelative(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 26))
	const d, theta = 64, 1e6
	q, k := randFloats(rng, d), randFloats(rng, d)
	score := func(pq, pk int) float64 {
		return float64(kernel.Dot(rope(q, 1, d, theta, pq), rope(k, 1, d, theta, pk)))
	}
	for _, dist := range []int{0, 1, 5, 17} {
		want := score(dist, 0)
		for _, pk := range []int{1, 9, 60} {
			if got := score(pk+dist, pk); math.Abs(got-want) > 1e-4 {
				t.Errorf("distance %d: score at key position %d = %v, at 0 = %v", dist, pk, got, want)
			}
		}
	}
}
