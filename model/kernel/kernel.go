package kernel

import (
	"math"
	"runtime"
	"sync"
)

// Dot returns Σ a[i]·b[i] for i < len(a), in float32, in a fixed order of
// operations for a given length: on AVX2 machines with fused multiply-adds
// over 8-lane accumulators, elsewhere over eight interleaved scalar sums.
func Dot(a, b []float32) float32 {
	if useSIMD {
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

// dotBF16 returns Σ a[i]·w[i] for bfloat16 weights w, widening each weight
// as it goes. The products and sums are Dot's, in Dot's order, so the result
// equals Dot(a, widened w) bit for bit; it only saves the pass that writes
// and re-reads the widened row.
func dotBF16(a []float32, w []uint16) float32 {
	if useSIMD {
		return dotBF16SIMD(a, w)
	}
	return dotBF16Go(a, w)
}

// dotBF16Go is the portable dotBF16.
func dotBF16Go(a []float32, w []uint16) float32 {
	n := len(a)
	w = w[:n]
	var s0, s1, s2, s3, s4, s5, s6, s7 float32
	i := 0
	for ; i+8 <= n; i += 8 {
		s0 += a[i] * math.Float32frombits(uint32(w[i])<<16)
		s1 += a[i+1] * math.Float32frombits(uint32(w[i+1])<<16)
		s2 += a[i+2] * math.Float32frombits(uint32(w[i+2])<<16)
		s3 += a[i+3] * math.Float32frombits(uint32(w[i+3])<<16)
		s4 += a[i+4] * math.Float32frombits(uint32(w[i+4])<<16)
		s5 += a[i+5] * math.Float32frombits(uint32(w[i+5])<<16)
		s6 += a[i+6] * math.Float32frombits(uint32(w[i+6])<<16)
		s7 += a[i+7] * math.Float32frombits(uint32(w[i+7])<<16)
	}
	for ; i < n; i++ {
		s0 += a[i] * math.Float32frombits(uint32(w[i])<<16)
	}
	return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
}

// fusedRows is the batch size up to which BF16 weights are widened inside
// the dot product rather than once per weight row: with few input rows the
// separate widening pass costs more than it saves.
const fusedRows = 2

// minParallelWork is the number of multiply-adds below which MatMul stays on
// the calling goroutine: below it, starting goroutines costs more than it
// saves.
const minParallelWork = 1 << 16

// MatMul: out[t, r] = Σ_c x[t, c] · W[r, c] for t < rows, r < W.Rows
// (PyTorch's y = x · Wᵀ). x is [rows, W.Cols], out is [rows, W.Rows].
//
// The weight rows are split across GOMAXPROCS goroutines; each weight row is
// widened to float32 once and multiplied with every input row, so
// half-precision weights cost one conversion per row, not one per token.
func MatMul(out, x []float32, rows int, w *Matrix) {
	if rows == 0 {
		return
	}
	workers := runtime.GOMAXPROCS(0)
	if work := rows * w.Rows * w.Cols; work < minParallelWork || workers == 1 {
		matMulRange(out, x, rows, w, 0, w.Rows)
		return
	}
	if workers > w.Rows {
		workers = w.Rows
	}
	var wg sync.WaitGroup
	chunk := (w.Rows + workers - 1) / workers
	for lo := 0; lo < w.Rows; lo += chunk {
		hi := min(lo+chunk, w.Rows)
		wg.Go(func() { matMulRange(out, x, rows, w, lo, hi) })
	}
	wg.Wait()
}

func matMulRange(out, x []float32, rows int, w *Matrix, lo, hi int) {
	n, m := w.Cols, w.Rows
	if w.DType == BF16 && rows <= fusedRows {
		for r := lo; r < hi; r++ {
			wr := w.Half[r*n : (r+1)*n]
			for t := 0; t < rows; t++ {
				out[t*m+r] = dotBF16(x[t*n:(t+1)*n], wr)
			}
		}
		return
	}
	var buf []float32
	if w.DType != F32 {
		buf = make([]float32, n)
	}
	for r := lo; r < hi; r++ {
		var wr []float32
		if w.DType == F32 {
			wr = w.F32[r*n : (r+1)*n]
		} else {
			w.Row(buf, r)
			wr = buf
		}
		for t := 0; t < rows; t++ {
			out[t*m+r] = Dot(x[t*n:(t+1)*n], wr)
		}
	}
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
func SiLUMul(out, a, b []float32) {
	b = b[:len(a)]
	out = out[:len(a)]
	for i, v := range a {
		s := float32(float64(v) / (1 + math.Exp(-float64(v))))
		out[i] = s * b[i]
	}
}

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
