// Package sample picks the next token from a distribution of logits: greedy,
// or random with temperature, top-k and top-p (nucleus) filtering, seeded and
// reproducible.
package sample

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// ErrParams is wrapped by every invalid-parameter error.
var ErrParams = errors.New("sample: invalid parameters")

// Params are the sampling parameters of one request.
type Params struct {
	// Temperature divides the logits; 0 is greedy (argmax).
	Temperature float64
	// TopK keeps the K most likely tokens; 0 keeps all.
	TopK int
	// TopP keeps the smallest set of most likely tokens whose probability
	// reaches TopP; 0 or 1 keeps all.
	TopP float64
	// Seed seeds the sampler's random source.
	Seed uint64
}

// Validate reports the first out-of-range parameter, naming it.
func (p Params) Validate() error {
	switch {
	case math.IsNaN(p.Temperature) || p.Temperature < 0 || p.Temperature > 100:
		return fmt.Errorf("%w: temperature %v must be in [0, 100]", ErrParams, p.Temperature)
	case p.TopK < 0:
		return fmt.Errorf("%w: top_k %d must not be negative", ErrParams, p.TopK)
	case math.IsNaN(p.TopP) || p.TopP < 0 || p.TopP > 1:
		return fmt.Errorf("%w: top_p %v must be in [0, 1]", ErrParams, p.TopP)
	}
	return nil
}

// Sampler draws tokens for one sequence. Its random stream depends only on
// the seed and the number of draws so far, so a sequence replays exactly. A
// Sampler is not safe for concurrent use.
type Sampler struct {
	p       Params
	rng     *rand.Rand
	cand    []candidate
	keys    []uint64
	weights []float64
}

type candidate struct {
	id int
	p  float64
}

// New returns a sampler for valid params.
func New(p Params) (*Sampler, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &Sampler{p: p, rng: rand.New(rand.NewPCG(p.Seed, 0x6d6f6567726964))}, nil
}

// Skip advances the sampler past n tokens' draws, as if Next had picked n
// tokens: a sequence resumed after n tokens then draws what it would have
// drawn uninterrupted. Every sampled token takes one draw, whatever the
// filters; greedy decoding takes none.
func (s *Sampler) Skip(n int) {
	if s.p.Temperature == 0 {
		return
	}
	for range n {
		s.rng.Uint64()
	}
}

// Greedy returns the index of the largest logit, the lowest index on ties.
func Greedy(logits []float32) int {
	best := 0
	for i, v := range logits {
		if v > logits[best] {
			best = i
		}
	}
	return best
}

// Next picks a token from logits [vocab]. Filtering is applied in the order
// Hugging Face's generate uses: temperature, then top-k, then top-p. Only
// what a filter needs is sorted: nothing without top-k and top-p, the k most
// likely tokens with top-k alone.
func (s *Sampler) Next(logits []float32) int {
	t := s.p.Temperature
	if t == 0 {
		return Greedy(logits)
	}
	k, tp := s.p.TopK, s.p.TopP
	topK := k > 0 && k < len(logits)
	topP := tp > 0 && tp < 1
	if !topK && !topP {
		return s.drawAll(logits)
	}

	// Candidates in order, most likely first and the lower id first on
	// ties; the order (and so the draw) does not depend on the algorithm.
	keys := s.keys[:0]
	for i, v := range logits {
		keys = append(keys, orderKey(v, i))
	}
	if topK {
		keys = smallestK(keys, k)
	} else {
		slices.Sort(keys)
	}
	s.keys = keys
	c := s.cand[:0]
	for _, key := range keys {
		id := int(uint32(key))
		c = append(c, candidate{id, float64(logits[id]) / t})
	}
	mx := c[0].p
	var sum float64
	for i := range c {
		c[i].p = math.Exp(c[i].p - mx)
		sum += c[i].p
	}
	for i := range c {
		c[i].p /= sum
	}
	sum = 1
	if topP {
		var acc float64
		for i := range c {
			acc += c[i].p
			// Keep the token that crosses top_p; at least one is kept.
			if acc >= tp {
				c = c[:i+1]
				break
			}
		}
		sum = acc
	}
	s.cand = c
	u := s.rng.Float64() * sum
	for _, x := range c {
		if u < x.p {
			return x.id
		}
		u -= x.p
	}
	return c[len(c)-1].id
}

// drawAll samples from softmax(logits/T) over the whole vocabulary, walking
// it in id order: no sort is needed when nothing is filtered.
func (s *Sampler) drawAll(logits []float32) int {
	t := s.p.Temperature
	mx := math.Inf(-1)
	for _, v := range logits {
		mx = max(mx, float64(v)/t)
	}
	w := s.weights[:0]
	var sum float64
	for _, v := range logits {
		e := math.Exp(float64(v)/t - mx)
		w = append(w, e)
		sum += e
	}
	s.weights = w
	u := s.rng.Float64() * sum
	last := 0
	for i, p := range w {
		if u < p {
			return i
		}
		u -= p
		if p > 0 {
			last = i
		}
	}
	return last
}

// orderKey maps (logit, id) to a key whose ascending order is descending
// logit, then ascending id. NaN sorts last.
func orderKey(v float32, id int) uint64 {
	bits := math.Float32bits(v)
	switch {
	case v != v:
		bits = 0 // below every number once flipped
	case bits&0x80000000 != 0:
		bits = ^bits
	default:
		bits |= 0x80000000
	}
	return uint64(^bits)<<32 | uint64(uint32(id))
}

// smallestK returns the k smallest keys in ascending order, reusing keys'
// storage: a max-heap of the best k seen, then a sort of those k.
func smallestK(keys []uint64, k int) []uint64 {
	if k >= len(keys) {
		slices.Sort(keys)
		return keys
	}
	h := keys[:k]
	for i := k/2 - 1; i >= 0; i-- {
		siftDown(h, i)
	}
	for _, key := range keys[k:] {
		if key < h[0] {
			h[0] = key
			siftDown(h, 0)
		}
	}
	slices.Sort(h)
	return h
}

// siftDown restores the max-heap property of h below i.
func siftDown(h []uint64, i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		big := l
		if r := l + 1; r < len(h) && h[r] > h[l] {
			big = r
		}
		if h[i] >= h[big] {
			return
		}
		h[i], h[big] = h[big], h[i]
		i = big
	}
}
