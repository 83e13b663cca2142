package model

import "math"

// LogSumExp returns log Σ exp(logits[i]), the normaliser of the log-softmax,
// computed in float64 after subtracting the largest logit so that no term
// overflows. Every log-probability moegrid reports goes through it, so that
// the router's API and in-process evaluation give the same numbers.
func LogSumExp(logits []float32) float64 {
	hi := float64(logits[0])
	for _, v := range logits {
		hi = max(hi, float64(v))
	}
	var sum float64
	for _, v := range logits {
		sum += math.Exp(float64(v) - hi)
	}
	return hi + math.Log(sum)
}

// Logprob returns the log-probability of tok under the distribution of
// logits [vocab], given their LogSumExp: the raw logits' log-softmax,
// before temperature or any filter, rounded to float32 as the API reports it.
func Logprob(logits []float32, logZ float64, tok int) float32 {
	return float32(float64(logits[tok]) - logZ)
}
