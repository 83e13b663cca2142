package model

import "math/rand/v2"

// FillCache gives c n positions of random keys and values, as if a
// prompt of n tokens had been prefilled, without the quadratic cost of
// prefilling one: benchmarks of long-context steps start from it.
func FillCache(c *Cache, n int, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	for l := range c.keys {
		c.keys[l] = make([]float32, n*c.kvDim)
		c.values[l] = make([]float32, n*c.kvDim)
		for i := range c.keys[l] {
			c.keys[l][i] = float32(rng.NormFloat64())
			c.values[l][i] = float32(rng.NormFloat64())
		}
	}
	c.n = n
}
