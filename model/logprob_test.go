package model_test

import (
	"math"
	"testing"

	"github.com/moegrid/moegrid/model"
)

func TestLogSumExp(t *testing.T) {
	for _, tc := range []struct {
		name   string
		logits []float32
		want   float64
	}{
		{"one", []float32{3}, 3},
		{"equal", []float32{0, 0, 0, 0}, math.Log(4)},
		{"small", []float32{1, 2, 3}, math.Log(math.E + math.Exp(2) + math.Exp(3))},
		// exp(1000) overflows float64: only the shift by the largest logit
		// keeps it finite.
		{"large", []float32{1000, 1000}, 1000 + math.Log(2)},
		{"very negative", []float32{-1e30, 0}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := model.LogSumExp(tc.logits); math.Abs(got-tc.want) > 1e-12*max(1, math.Abs(tc.want)) {
				t.Errorf("LogSumExp(%v) = %v, want %v", tc.logits, got, tc.want)
			}
		})
	}
}

func TestLogprobSumsToOne(t *testing.T) {
	logits := []float32{-2.5, 0.25, 7, 3.5, -40, 1}
	z := model.LogSumExp(logits)
	var p float64
	for tok := range logits {
		lp := model.Logprob(logits, z, tok)
		if lp > 0 {
			t.Errorf("log-probability of %d is %v, above 0", tok, lp)
		}
		p += math.Exp(float64(lp))
	}
	if math.Abs(p-1) > 1e-6 {
		t.Errorf("probabilities sum to %v", p)
	}
}
