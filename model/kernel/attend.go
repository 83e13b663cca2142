package kernel

// Attend computes causal attention for the g query heads that share one
// key/value head (grouped-query attention), over n cached positions:
//
//	out[h] = softmax_j(q[h]·keys[j]·scale) · values[j]   for h < g
//
// q and out are [g, d]; position j's key is keys[j·stride : j·stride+d]
// and its value values[j·stride : j·stride+d], so one KV head of a cache
// laid out [position, kvDim] is passed by offsetting keys and values to it.
// scores is scratch, grown to g·n and returned for reuse.
//
// Each key and value row is read once for all g heads, which is what a
// long context's attention costs: streaming the cache. The order of
// operations is fixed by g, d and n alone: the scores are Dot products,
// each head's softmax is Softmax, and out[h][i] sums over j in ascending
// order (fused multiply-adds on AVX2). A head's output therefore does not
// depend on the batch it is computed in.
func Attend(out, q []float32, g, d int, keys, values []float32, stride, n int, scale float32, scores []float32) []float32 {
	out, q = out[:g*d], q[:g*d]
	if n == 0 {
		clear(out)
		return scores
	}
	_ = keys[(n-1)*stride+d-1]
	_ = values[(n-1)*stride+d-1]
	if cap(scores) < g*n {
		scores = make([]float32, g*n)
	}
	scores = scores[:g*n]
	for j := range n {
		k := keys[j*stride : j*stride+d]
		for h := range g {
			scores[h*n+j] = Dot(q[h*d:(h+1)*d], k) * scale
		}
	}
	for h := range g {
		Softmax(scores[h*n : (h+1)*n])
	}
	clear(out)
	if useSIMD && d%32 == 0 {
		weightedSumsSIMD(out, scores, n, g, d, values, stride)
		return scores
	}
	weightedSumsGo(out, scores, n, g, d, values, stride)
	return scores
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
