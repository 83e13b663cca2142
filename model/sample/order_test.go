package sample

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestOrderMatchesFullSort checks the selection used by top-k and top-p
// against a plain sort by (logit descending, id ascending), ties and NaN
// included.
func TestOrderMatchesFullSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1, 2, 10, 1000, 32000} {
		logits := make([]float32, n)
		for i := range logits {
			// Few distinct values, so ties are common.
			logits[i] = float32(rng.IntN(50)) / 4
		}
		logits[rng.IntN(n)] = float32(math.NaN())
		want := make([]int, n)
		for i := range want {
			want[i] = i
		}
		rank := func(v float32) float64 {
			if v != v {
				return math.Inf(-1)
			}
			return float64(v)
		}
		slices.SortStableFunc(want, func(a, b int) int { return cmp.Compare(rank(logits[b]), rank(logits[a])) })
		keys := make([]uint64, n)
		for i, v := range logits {
			keys[i] = orderKey(v, i)
		}
		for _, k := range []int{1, 3, n / 2, n} {
			if k < 1 {
				continue
			}
			got := smallestK(slices.Clone(keys), k)
			for j, key := range got {
				if int(uint32(key)) != want[j] {
					t.Fatalf("n=%d k=%d: position %d is id %d, want %d", n, k, j, uint32(key), want[j])
				}
			}
		}
	}
}

func BenchmarkNextVocab(b *testing.B) {
	logits := make([]float32, 32000)
	for i := range logits {
		logits[i] = float32((i*7919)%1000) / 100
	}
	for _, tc := range []struct {
		name string
		p    Params
	}{
		{"temperature", Params{Temperature: 1, Seed: 1}},
		{"top-k=50", Params{Temperature: 1, TopK: 50, Seed: 1}},
		{"top-p=0.9", Params{Temperature: 1, TopP: 0.9, Seed: 1}},
	} {
		s, err := New(tc.p)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				s.Next(logits)
			}
		})
	}
}
