package kernel

import "math"

// RoPEFreqs returns the rotary inverse frequencies inv[i] = 1 / theta^(2i/d)
// for i < d/2, computed in float32 from a float32 exponent as Hugging Face's
// MixtralRotaryEmbedding does.
func RoPEFreqs(d int, theta float64) []float32 {
	inv := make([]float32, d/2)
	for i := range inv {
		exp := float32(2*i) / float32(d)
		inv[i] = float32(1 / math.Pow(theta, float64(exp)))
	}
	return inv
}

// RoPEAngles fills cos[i] and sin[i] (i < len(inv)) for position pos: the
// angle pos·inv[i] is rounded to float32 first, as in the reference.
func RoPEAngles(cos, sin, inv []float32, pos int) {
	for i, f := range inv {
		a := float64(float32(pos) * f)
		cos[i] = float32(math.Cos(a))
		sin[i] = float32(math.Sin(a))
	}
}

// RoPE rotates each of the heads [heads, d] in x in place, in the rotate-half
// (NeoX) layout: element i pairs with element i + d/2.
//
//	x'[i]     = x[i]·cos[i] − x[i+d/2]·sin[i]
//	x'[i+d/2] = x[i+d/2]·cos[i] + x[i]·sin[i]
func RoPE(x []float32, heads, d int, cos, sin []float32) {
	half := d / 2
	for h := 0; h < heads; h++ {
		v := x[h*d : (h+1)*d]
		for i := 0; i < half; i++ {
			a, b := v[i], v[i+half]
			v[i] = a*cos[i] - b*sin[i]
			v[i+half] = b*cos[i] + a*sin[i]
		}
	}
}
