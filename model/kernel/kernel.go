package kernel

import "math"

// Dot returns Σ a[i]·b[i] for i < len(a), in float32, in a fixed order of
// operations for a given length: on AVX2 machines with fused multiply-adds
// over 8-lane accumulators, elsewhere over eight interleaved scalar sums.
func Dot(a, b []float32) float32 {
	return dot(useSIMD, a, b)
}

// dot is Dot on the SIMD kernel or the portable one.
func dot(simd bool, a, b []float32) float32 {
	if simd {
		return dotSIMD(a, b)
	}
	return dotGo(a, b)
}

// dotGo is the portable Dot.
func dotGo(a, b []float32) float32 {
	n := len(a)
	b = b[:n]
	var s0, s1, s2, s3, s4, s5, s6, s7 float32
	i := 0
	for ; i+8 <= n; i += 8 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
		s4 += a[i+4] * b[i+4]
		s5 += a[i+5] * b[i+5]
		s6 += a[i+6] * b[i+6]
		s7 += a[i+7] * b[i+7]
	}
	for ; i < n; i++ {
		s0 += a[i] * b[i]
	}
	return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
}

// minChunkWork is the number of multiply-adds below which a chunk of a
// parallel matrix product is not worth handing to another goroutine.
const minChunkWork = 1 << 15

// Product is one matrix product of MatMuls: Out[t, r] = Σ_c x[t, c]·W[r, c].
type Product struct {
	Out []float32 // [rows, W.Rows()]
	W   Matrix
}

// MatMul: out[t, r] = Σ_c x[t, c] · W[r, c] for t < rows, r < W.Rows()
// (PyTorch's y = x · Wᵀ). x is [rows, W.Cols()], out is [rows, W.Rows()].
// The weight rows are split across the worker pool.
func MatMul(out, x []float32, rows int, w Matrix) {
	MatMuls(x, rows, Product{Out: out, W: w})
}

// MatMuls computes several products of the same input x [rows, cols] (the
// query, key and value projections, say) in one parallel loop over all their
// weight rows, so the workers meet once instead of once per product.
func MatMuls(x []float32, rows int, ps ...Product) {
	if rows == 0 || len(ps) == 0 {
		return
	}
	total, cols := 0, ps[0].W.Cols()
	for _, p := range ps {
		total += p.W.Rows()
	}
	// About sixteen chunks per worker, so that the workers finish within a
	// small chunk of each other (For hands out large shares of them first)
	// and a worker slowed by something else takes fewer, but none too
	// small to be worth handing over.
	chunks := 16 * workers()
	grain := max(
		(total+chunks-1)/chunks,
		minChunkWork/max(rows*cols, 1),
		1)
	grain = (grain + tileCols - 1) / tileCols * tileCols
	// In the BF16 compute mode the inputs are rounded once for every
	// product that takes them so.
	var xb []uint16
	if compute == ComputeBF16 {
		for _, p := range ps {
			if _, ok := p.W.(bf16Input); ok {
				b := roundBF16(x[:rows*cols])
				defer putHalfScratch(b)
				xb = *b
				break
			}
		}
	}
	// In the int8 mode they are quantized once likewise, once for each
	// activation block the products take: xa[i] is product i's, nil where
	// it takes float32 inputs.
	var xa []*int8Act
	if compute == ComputeInt8 && cols%int8Block == 0 {
		xa = make([]*int8Act, len(ps))
		for i, p := range ps {
			iw, ok := p.W.(int8Input)
			if !ok || cols%iw.int8ActBlock() != 0 {
				continue
			}
			for _, a := range xa[:i] {
				if a != nil && a.block == iw.int8ActBlock() {
					xa[i] = a
					break
				}
			}
			if xa[i] == nil {
				xa[i] = quantizeInt8(x[:rows*cols], iw.int8ActBlock())
				defer putInt8(xa[i])
			}
		}
	}
	For(total, grain, func(lo, hi int) {
		base := 0
		for i, p := range ps {
			m := p.W.Rows()
			if a, b := max(lo-base, 0), min(hi-base, m); a < b {
				if bw, ok := p.W.(bf16Input); ok && xb != nil {
					bw.mulRowsBF16(p.Out, xb, rows, a, b)
				} else if xa != nil && xa[i] != nil {
					p.W.(int8Input).mulRowsInt8(p.Out, xa[i], cols, rows, a, b)
				} else {
					p.W.MulRows(p.Out, x, rows, a, b)
				}
			}
			base += m
		}
	})
}

// RMSNorm: out[t, i] = weight[i] · x[t, i] / sqrt(mean_i(x[t, i]²) + eps) for
// each row t of x [rows, len(weight)]. The mean is taken in float64. out may
// alias x.
func RMSNorm(out, x, weight []float32, eps float64) {
	n := len(weight)
	for t := 0; t+n <= len(x); t += n {
		row := x[t : t+n]
		var ss float64
		for _, v := range row {
			ss += float64(v) * float64(v)
		}
		inv := float32(1 / math.Sqrt(ss/float64(n)+eps))
		o := out[t : t+n]
		for i, v := range row {
			o[i] = weight[i] * (v * inv)
		}
	}
}

// Softmax replaces x by exp(x - max) / Σ exp(x - max), in place. The
// exponentials and their sum are taken in float64.
func Softmax(x []float32) {
	if len(x) == 0 {
		return
	}
	mx := x[0]
	for _, v := range x[1:] {
		mx = max(mx, v)
	}
	var sum float64
	for i, v := range x {
		e := math.Exp(float64(v - mx))
		x[i] = float32(e)
		sum += e
	}
	inv := 1 / sum
	for i, v := range x {
		x[i] = float32(float64(v) * inv)
	}
}

// SiLUMul: out[i] = silu(a[i]) · b[i] where silu(a) = a · sigmoid(a), the
// SwiGLU activation of a Mixtral expert. out may alias a or b.
// Its exponentials take about 10 ns each, so an expert's (the intermediate
// size a row) is split over the workers: run on one, it kept the others
// waiting long enough to park between the expert's two matrix products.
func SiLUMul(out, a, b []float32) {
	b = b[:len(a)]
	out = out[:len(a)]
	For(len(a), siluGrain, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			v := a[i]
			s := float32(float64(v) / (1 + math.Exp(-float64(v))))
			out[i] = s * b[i]
		}
	})
}

// siluGrain is the number of SiLUMul elements a worker takes at a time.
const siluGrain = 1024

// AddScaled: dst[i] += s · x[i].
func AddScaled(dst []float32, s float32, x []float32) {
	x = x[:len(dst)]
	for i := range dst {
		dst[i] += s * x[i]
	}
}

// Add: dst[i] += x[i].
func Add(dst, x []float32) {
	x = x[:len(dst)]
	for i := range dst {
		dst[i] += x[i]
	}
}
