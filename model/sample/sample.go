// Package sample picks the next token from a distribution of logits: greedy,
// or random with temperature, top-k and top-p (nucleus) filtering, seeded and
// reproducible.
package sample

import (
	"cmp"
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
	p    Params
	rng  *rand.Rand
	cand []candidate
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
// Hugging Face's generate uses: temperature, then top-k, then top-p.
func (s *Sampler) Next(logits []float32) int {
	if s.p.Temperature == 0 {
		return Greedy(logits)
	}
	c := s.cand[:0]
	for i, v := range logits {
		c = append(c, candidate{i, float64(v) / s.p.Temperature})
	}
	// Most likely first; ties keep the lower id first, so the order (and the
	// draw) does not depend on the sort algorithm.
	slices.SortFunc(c, func(a, b candidate) int {
		if a.p != b.p {
			return cmp.Compare(b.p, a.p)
		}
		return cmp.Compare(a.id, b.id)
	})
	if k := s.p.TopK; k > 0 && k < len(c) {
		c = c[:k]
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
	if tp := s.p.TopP; tp > 0 && tp < 1 {
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
	} else {
		sum = 1
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
