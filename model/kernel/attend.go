package kernel

import "math"

// Attend computes causal attention for the g query heads that share one
// key/value head (grouped-query attention), over n cached positions:
//
//	out[h] = softmax_j(q[h]·keys[j]·scale) · values[j]   for h < g
//
// q and out are [g, d]; position j's key is keys[j·stride : j·stride+d]
// and its value values[j·stride : j·stride+d], so one KV head of a cache
// laid out [position, kvDim] is passed by offsetting keys and values to it.
// scores is scratch, grown to g·(n+1) and returned for reuse.
//
// Each key and value row is read once for all g heads, which is what a
// long context's attention costs: streaming the cache. The order of
// operations is fixed by g, d and n alone: the scores are Dot products;
// each head's exponentials (expSub) are summed in a fixed order; out[h][i]
// sums the exponential-weighted values over j in ascending order and is
// divided by that sum at the end. A head's output therefore does not
// depend on the batch it is computed in.
func Attend(out, q []float32, g, d int, keys, values []float32, stride, n int, scale float32, scores []float32) []float32 {
	return attend(useSIMD, out, q, g, d, keys, values, stride, n, scale, scores)
}

// attend is Attend on the AVX2 kernels (simd) or the portable ones.
func attend(simd bool, out, q []float32, g, d int, keys, values []float32, stride, n int, scale float32, scores []float32) []float32 {
	out, q = out[:g*d], q[:g*d]
	clear(out)
	if n == 0 {
		return scores
	}
	_ = keys[(n-1)*stride+d-1]
	_ = values[(n-1)*stride+d-1]
	// The scores of head h are scores[h·n : (h+1)·n], the sums of their
	// exponentials scores[g·n+h].
	if cap(scores) < g*n+g {
		scores = make([]float32, g*n+g)
	}
	scores = scores[:g*n+g]
	sums := scores[g*n:]
	// The SIMD scores and weighted sums take heads of whole 32-value groups.
	simdHeads := simd && d%32 == 0
	if simdHeads {
		scoresAVX2(&scores[0], &q[0], g, d, &keys[0], stride, n, scale)
	} else {
		for j := range n {
			k := keys[j*stride : j*stride+d]
			for h := range g {
				scores[h*n+j] = dot(simd, q[h*d:(h+1)*d], k) * scale
			}
		}
	}
	for h := range g {
		sc := scores[h*n : (h+1)*n]
		mx := sc[0]
		for _, v := range sc[1:] {
			mx = max(mx, v)
		}
		sums[h] = expSub(simd, sc, mx)
	}
	if simdHeads {
		weightedSumsSIMD(out, scores, n, g, d, values, stride)
	} else {
		weightedSumsGo(out, scores, n, g, d, values, stride)
	}
	for h := range g {
		inv := 1 / sums[h]
		for i := range out[h*d : (h+1)*d] {
			out[h*d+i] *= inv
		}
	}
	return scores
}

// expSub replaces x[i] by exp(x[i]-mx) and returns their sum. On AVX2 the
// leading multiple of 8 elements take a polynomial exponential (within
// about two float32 ulps) eight lanes at a time, the rest math.Exp;
// elsewhere every element takes math.Exp, summed in float64.
func expSub(simd bool, x []float32, mx float32) float32 {
	k := 0
	var sum float32
	if simd {
		k = len(x) &^ 7
		if k > 0 {
			sum = expSubAVX2(&x[0], k, mx)
		}
	}
	var rest float64
	for i := k; i < len(x); i++ {
		e := math.Exp(float64(x[i] - mx))
		x[i] = float32(e)
		rest += e
	}
	return sum + float32(rest)
}

// attendBlock is the number of positions whose value rows the SIMD
// weighted sum takes at a time: the block's rows of one KV head (64 KiB
// at head size 64) stay in the core's cache while every query head and
// column group of the output passes over them.
const attendBlock = 256

// weightedSumsSIMD is the weighted sum of Attend on AVX2, d a multiple of
// 32: each group of 32 output columns of each head is held in registers
// over a block of positions, the positions taken in ascending order.
func weightedSumsSIMD(out, w []float32, n, g, d int, values []float32, stride int) {
	for j0 := 0; j0 < n; j0 += attendBlock {
		m := min(attendBlock, n-j0)
		for h := range g {
			for c := 0; c < d; c += 32 {
				accumulate32AVX2(&out[h*d+c], &w[h*n+j0], &values[j0*stride+c], stride, m)
			}
		}
	}
}

// weightedSumsGo is the portable weighted sum of Attend: out[h][i] +=
// w[h·n+j] · values[j·stride+i] for j in ascending order.
func weightedSumsGo(out, w []float32, n, g, d int, values []float32, stride int) {
	for j := range n {
		v := values[j*stride : j*stride+d]
		for h := range g {
			s := w[h*n+j]
			o := out[h*d : (h+1)*d]
			for i, x := range v {
				o[i] += s * x
			}
		}
	}
}
