package sample_test

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/moegrid/moegrid/model/sample"
)

func newSampler(t testing.TB, p sample.Params) *sample.Sampler {
	t.Helper()
	s, err := sample.New(p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func randLogits(rng *rand.Rand, n int) []float32 {
	l := make([]float32, n)
	for i := range l {
		l[i] = float32(rng.NormFloat64() * 3)
	}
	return l
}

func TestGreedy(t *testing.T) {
	inf := float32(math.Inf(1))
	for _, tc := range []struct {
		logits []float32
		want   int
	}{
		{[]float32{0}, 0},
		{[]float32{1, 3, 2}, 1},
		{[]float32{-5, -1, -3}, 1},
		{[]float32{5, 5, 1}, 0},    // tie: lowest id
		{[]float32{1, 5, 5, 5}, 1}, // tie: lowest id
		{[]float32{2, 1, 2}, 0},
		{[]float32{-inf, -inf, 0}, 2},
		{[]float32{0, inf, inf}, 1},
	} {
		if got := sample.Greedy(tc.logits); got != tc.want {
			t.Errorf("Greedy(%v) = %d, want %d", tc.logits, got, tc.want)
		}
	}
}

// draw returns n tokens drawn from the same logits.
func draw(s *sample.Sampler, logits []float32, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = s.Next(logits)
	}
	return out
}

func TestSeededReproducible(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	logits := randLogits(rng, 50)
	for _, p := range []sample.Params{
		{Temperature: 1, Seed: 42},
		{Temperature: 0.7, TopK: 10, Seed: 42},
		{Temperature: 1.3, TopP: 0.9, Seed: 42},
		{Temperature: 1, TopK: 20, TopP: 0.95, Seed: 0},
	} {
		t.Run(fmt.Sprintf("%+v", p), func(t *testing.T) {
			a := draw(newSampler(t, p), logits, 200)
			b := draw(newSampler(t, p), logits, 200)
			if !slices.Equal(a, b) {
				t.Errorf("same seed, different sequences:\n%v\n%v", a, b)
			}
			other := p
			other.Seed++
			if c := draw(newSampler(t, other), logits, 200); slices.Equal(a, c) {
				t.Errorf("seeds %d and %d gave the same sequence", p.Seed, other.Seed)
			}
		})
	}
}

// TestReplaysAcrossLogits checks that a sequence replays when each step has
// its own distribution, as in generation.
func TestReplaysAcrossLogits(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	steps := make([][]float32, 100)
	for i := range steps {
		steps[i] = randLogits(rng, 30)
	}
	run := func() []int {
		s := newSampler(t, sample.Params{Temperature: 0.8, TopK: 12, TopP: 0.9, Seed: 7})
		var out []int
		for _, l := range steps {
			out = append(out, s.Next(l))
		}
		return out
	}
	if a, b := run(), run(); !slices.Equal(a, b) {
		t.Errorf("replay differs:\n%v\n%v", a, b)
	}
}

// TestDegenerateToGreedy checks the settings that leave one candidate:
// temperature 0, top-k 1 and a tiny top-p all pick the argmax, ties to the
// lowest id, whatever the seed.
func TestDegenerateToGreedy(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	cases := [][]float32{{1, 4, 4, 0}, {2, 2}, {-1, -1, -3}}
	for range 50 {
		cases = append(cases, randLogits(rng, 40))
	}
	for _, p := range []sample.Params{
		{Temperature: 0},
		{Temperature: 0, TopK: 5, TopP: 0.5},
		{Temperature: 1.5, TopK: 1},
		{Temperature: 1, TopP: 1e-9},
		{Temperature: 100, TopP: 1e-9},
	} {
		t.Run(fmt.Sprintf("%+v", p), func(t *testing.T) {
			for seed := range uint64(5) {
				p.Seed = seed
				s := newSampler(t, p)
				for _, l := range cases {
					if got, want := s.Next(l), sample.Greedy(l); got != want {
						t.Fatalf("seed %d: Next(%v) = %d, want greedy %d", seed, l, got, want)
					}
				}
			}
		})
	}
}

// chiSquare compares observed counts with expected probabilities.
func chiSquare(counts []int, probs []float64, n int) float64 {
	var x2 float64
	for i, p := range probs {
		e := p * float64(n)
		x2 += (float64(counts[i]) - e) * (float64(counts[i]) - e) / e
	}
	return x2
}

func softmax(logits []float32, temperature float64) []float64 {
	p := make([]float64, len(logits))
	var sum float64
	for i, l := range logits {
		p[i] = math.Exp(float64(l) / temperature)
		sum += p[i]
	}
	for i := range p {
		p[i] /= sum
	}
	return p
}

// chi2Critical holds the chi-square values exceeded with probability 0.001
// by a correct sampler, by degrees of freedom.
var chi2Critical = map[int]float64{1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}

// TestDistribution draws many tokens from a small vocabulary, seeded so the
// test is deterministic, and checks the frequencies against the intended
// distribution with a chi-square test (and each frequency within 0.01).
func TestDistribution(t *testing.T) {
	logits := []float32{1.0, 2.0, 0.5, -1.0, 1.5, 0.0}
	full := func(temp float64) []float64 { return softmax(logits, temp) }
	// restricted renormalises the softmax over the kept ids.
	restricted := func(keep ...int) []float64 {
		p := full(1)
		out := make([]float64, len(p))
		var sum float64
		for _, i := range keep {
			sum += p[i]
		}
		for _, i := range keep {
			out[i] = p[i] / sum
		}
		return out
	}
	// By probability: id 1 (0.420), 4 (0.255), 0 (0.154), 2 (0.094), 5 (0.057),
	// 3 (0.021). Top-p applies to the distribution top-k left, renormalised:
	// after top-k 4 the top three hold 0.898, so top-p 0.85 keeps three (over
	// the whole distribution it would take four).
	for _, tc := range []struct {
		name string
		p    sample.Params
		want []float64
	}{
		{"temperature 1", sample.Params{Temperature: 1, Seed: 1}, full(1)},
		{"temperature 2", sample.Params{Temperature: 2, Seed: 2}, full(2)},
		{"temperature 0.5", sample.Params{Temperature: 0.5, Seed: 3}, full(0.5)},
		{"top-k 3", sample.Params{Temperature: 1, TopK: 3, Seed: 4}, restricted(1, 4, 0)},
		{"top-k 6 keeps all", sample.Params{Temperature: 1, TopK: 6, Seed: 5}, full(1)},
		{"top-k 100 keeps all", sample.Params{Temperature: 1, TopK: 100, Seed: 5}, full(1)},
		{"top-p 0.7", sample.Params{Temperature: 1, TopP: 0.7, Seed: 6}, restricted(1, 4, 0)},
		{"top-p 0.5", sample.Params{Temperature: 1, TopP: 0.5, Seed: 7}, restricted(1, 4)},
		{"top-p 1 keeps all", sample.Params{Temperature: 1, TopP: 1, Seed: 8}, full(1)},
		{"top-k 4 then top-p 0.85", sample.Params{Temperature: 1, TopK: 4, TopP: 0.85, Seed: 9}, restricted(1, 4, 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 60000
			s := newSampler(t, tc.p)
			counts := make([]int, len(logits))
			for range n {
				counts[s.Next(logits)]++
			}
			var probs []float64
			var obs []int
			for i, p := range tc.want {
				if p == 0 {
					if counts[i] != 0 {
						t.Errorf("id %d drawn %d times, want never", i, counts[i])
					}
					continue
				}
				probs = append(probs, p)
				obs = append(obs, counts[i])
				if f := float64(counts[i]) / n; math.Abs(f-p) > 0.01 {
					t.Errorf("id %d: frequency %.4f, want %.4f", i, f, p)
				}
			}
			if df := len(probs) - 1; df > 0 {
				if x2 := chiSquare(obs, probs, n); x2 > chi2Critical[df] {
					t.Errorf("chi-square %.2f with %d degrees of freedom > %.2f; counts %v, want probabilities %v", x2, df, chi2Critical[df], counts, tc.want)
				}
			}
		})
	}
}

// TestTopKTopPExclude uses a larger vocabulary and checks only membership:
// nothing outside the top k, or outside the nucleus, is ever drawn.
func TestTopKTopPExclude(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	logits := randLogits(rng, 200)
	order := make([]int, len(logits))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		switch {
		case logits[a] > logits[b]:
			return -1
		case logits[a] < logits[b]:
			return 1
		}
		return 0
	})
	probs := softmax(logits, 1)
	// nucleus is the smallest top set whose probability reaches topP.
	nucleus := func(topP float64) []int {
		var acc float64
		for i, id := range order {
			acc += probs[id]
			if acc >= topP {
				return order[:i+1]
			}
		}
		return order
	}
	for _, tc := range []struct {
		p    sample.Params
		keep []int
	}{
		{sample.Params{Temperature: 1, TopK: 5}, order[:5]},
		{sample.Params{Temperature: 3, TopK: 17}, order[:17]},
		{sample.Params{Temperature: 1, TopP: 0.5}, nucleus(0.5)},
		{sample.Params{Temperature: 1, TopP: 0.9}, nucleus(0.9)},
	} {
		t.Run(fmt.Sprintf("%+v", tc.p), func(t *testing.T) {
			s := newSampler(t, tc.p)
			seen := map[int]bool{}
			for range 5000 {
				id := s.Next(logits)
				if !slices.Contains(tc.keep, id) {
					t.Fatalf("drew id %d, outside the kept set %v", id, tc.keep)
				}
				seen[id] = true
			}
			if len(seen) < 2 {
				t.Errorf("drew only %v from %d candidates", seen, len(tc.keep))
			}
		})
	}
}

func TestValidate(t *testing.T) {
	nan := math.NaN()
	for _, tc := range []struct {
		p     sample.Params
		field string // "" for valid
	}{
		{sample.Params{}, ""},
		{sample.Params{Temperature: 100, TopK: 1 << 20, TopP: 1, Seed: math.MaxUint64}, ""},
		{sample.Params{Temperature: 0.7, TopK: 40, TopP: 0.95}, ""},
		{sample.Params{Temperature: -0.1}, "temperature"},
		{sample.Params{Temperature: 100.5}, "temperature"},
		{sample.Params{Temperature: nan}, "temperature"},
		{sample.Params{Temperature: math.Inf(1)}, "temperature"},
		{sample.Params{TopK: -1}, "top_k"},
		{sample.Params{TopP: -0.01}, "top_p"},
		{sample.Params{TopP: 1.01}, "top_p"},
		{sample.Params{TopP: nan}, "top_p"},
		{sample.Params{Temperature: 1, TopK: -3, TopP: 2}, "top_k"}, // the first bad field
	} {
		t.Run(fmt.Sprintf("%+v", tc.p), func(t *testing.T) {
			err := tc.p.Validate()
			_, newErr := sample.New(tc.p)
			if tc.field == "" {
				if err != nil || newErr != nil {
					t.Errorf("Validate = %v, New = %v; want nil", err, newErr)
				}
				return
			}
			if !errors.Is(err, sample.ErrParams) || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("Validate = %v, want ErrParams naming %s", err, tc.field)
			}
			if !errors.Is(newErr, sample.ErrParams) {
				t.Errorf("New error = %v, want ErrParams", newErr)
			}
		})
	}
}

// FuzzNext checks that valid parameters always yield a token of the
// vocabulary and invalid ones are refused.
func FuzzNext(f *testing.F) {
	f.Add(1.0, 0, 0.0, uint64(1), []byte{1, 2, 3})
	f.Add(0.0, 5, 0.5, uint64(2), []byte{0})
	f.Add(0.01, 1, 1e-9, uint64(3), []byte{255, 255, 0, 7})
	f.Add(100.0, 2, 0.99, uint64(4), []byte{9, 9, 9, 9, 9})
	f.Fuzz(func(t *testing.T, temp float64, topK int, topP float64, seed uint64, raw []byte) {
		p := sample.Params{Temperature: temp, TopK: topK, TopP: topP, Seed: seed}
		s, err := sample.New(p)
		if err != nil {
			if !errors.Is(err, sample.ErrParams) {
				t.Fatalf("New(%+v) = %v, want ErrParams", p, err)
			}
			return
		}
		if len(raw) == 0 {
			return
		}
		logits := make([]float32, len(raw))
		for i, b := range raw {
			logits[i] = float32(int(b)-128) / 8
		}
		for range 3 {
			if id := s.Next(logits); id < 0 || id >= len(logits) {
				t.Fatalf("Next = %d outside [0, %d)", id, len(logits))
			}
		}
	})
}

// TestSkipResumes: a sampler skipped past n tokens draws from there what a
// sampler that picked those n tokens draws, for every filter and greedy,
// so a sequence resumed after n tokens continues it exactly.
func TestSkipResumes(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	steps := make([][]float32, 40)
	for i := range steps {
		steps[i] = randLogits(rng, 30)
	}
	for _, p := range []sample.Params{
		{Temperature: 0, Seed: 1},
		{Temperature: 0.8, Seed: 2},
		{Temperature: 1.2, TopK: 5, Seed: 3},
		{Temperature: 0.7, TopP: 0.9, Seed: 4},
		{Temperature: 1, TopK: 1, Seed: 5},
	} {
		t.Run(fmt.Sprintf("%+v", p), func(t *testing.T) {
			whole := newSampler(t, p)
			var want []int
			for _, l := range steps {
				want = append(want, whole.Next(l))
			}
			for _, n := range []int{0, 1, 17, len(steps) - 1} {
				s := newSampler(t, p)
				s.Skip(n)
				got := slices.Clone(want[:n])
				for _, l := range steps[n:] {
					got = append(got, s.Next(l))
				}
				if !slices.Equal(got, want) {
					t.Errorf("skipped %d: %v, uninterrupted %v", n, got, want)
				}
			}
		})
	}
}
