package kernel

import (
	"math"
	"sync"

	"github.com/moegrid/moegrid/model/safetensors"
)

// The float formats multiply in tiles of up to tileRows input rows by
// tileCols weight rows, so that each weight vector loaded serves several
// input rows and each input vector several weight rows. Whatever the tile
// and however few of its rows are real, every output element is computed
// the same way: a 16-lane float32 accumulator per element, fused
// multiply-adds over the leading multiple of 16 columns in order, a fixed
// reduction tree over the lanes (lane i + lane i+8, then i + i+4, then
// i + i+2, then 0 + 1), then the remaining columns added one by one. The
// AVX-512 and AVX2 kernels implement that order exactly, so they agree bit
// for bit; the portable kernel follows the same tree with separate multiply
// and add.
const (
	tileRows = 4
	tileCols = 4
	lanes    = 16
)

// tileFunc computes acc[i·tileCols + j] = Σ_{c<k} x[i·xStride + c] · w_j[c]
// for i < nx ≤ tileRows and j < tileCols with the lane order above, k a
// multiple of the kernel's block (lanes, or 2·lanes for the BF16 dot
// product). X and W are the input and weight element types; w holds
// pointers to the first element of each of the tileCols weight rows.
type tileFunc[X, W any] func(acc *[tileRows * tileCols]float32, x []X, xStride, nx int, w *[tileCols]*W, k int)

// widenTileFunc is a tileFunc over 16-bit float weights that also stores
// each weight row j's first k values, widened, at d[j].
type widenTileFunc func(acc *[tileRows * tileCols]float32, x []float32, xStride, nx int, w *[tileCols]*uint16, k int, d *[tileCols]*float32)

// tiling is one way to multiply: a tile kernel, the number of columns its
// vector part takes at a time, and the product of one input and one weight
// element for the columns after that.
type tiling[X, W any] struct {
	tile  tileFunc[X, W]
	block int
	mul   func(x X, w W) float32
}

// mulTiled is MulRows for any format whose rows are arrays of W, over
// weight rows [lo, hi) of data, with input rows of X: the tile kernel
// takes the leading multiple of its block of columns, the rest are added
// one by one. Output element (t, r) goes to out[t·oStride + oBase + r - lo].
func mulTiled[X, W any](data []W, cols int, tl tiling[X, W], out []float32, oStride, oBase int, x []X, n, lo, hi int) {
	k := cols - cols%tl.block
	var acc [tileRows * tileCols]float32
	var w [tileCols]*W
	var rows [tileCols]int
	// A tile takes its weight rows from the four quarters of [lo, hi), so
	// that the weights stream from memory as four sequential runs, which
	// the hardware prefetchers follow, rather than four rows interleaved in
	// one page, which they do not. Each output is computed on its own, so
	// the grouping changes no bits.
	quarter := quarters(lo, hi)
	for q := range quarter {
		var nw int
		rows, nw = quarterTile(lo, hi, quarter, q)
		for j, r := range rows {
			w[j] = &data[r*cols]
		}
		for t := 0; t < n; t += tileRows {
			nx := min(tileRows, n-t)
			if k > 0 {
				tl.tile(&acc, x[t*cols:], cols, nx, &w, k)
			} else {
				clear(acc[:])
			}
			finishTile(&acc, tl.mul, data, cols, k, rows[:nw], rows[:nw], out[t*oStride+oBase-lo:], oStride, x[t*cols:], nx)
		}
	}
}

// finishTile writes the outputs of a tile of nx input rows of x and weight
// rows wRows of data: the tile kernel's sums acc over the first k columns,
// plus the products of the columns after them one by one. The output of
// input row i and weight row wRows[j] goes to out[i·oStride + oRows[j]].
func finishTile[X, W any](acc *[tileRows * tileCols]float32, mul func(X, W) float32, data []W, cols, k int, wRows, oRows []int, out []float32, oStride int, x []X, nx int) {
	for i := range nx {
		xr := x[i*cols : (i+1)*cols]
		o := out[i*oStride:]
		for j, r := range wRows {
			s := acc[i*tileCols+j]
			if k < cols {
				wr := data[r*cols : (r+1)*cols]
				for c := k; c < cols; c++ {
					s += mul(xr[c], wr[c])
				}
			}
			o[oRows[j]] = s
		}
	}
}

// quarters is how many tiles quarterTile makes of the rows [lo, hi).
func quarters(lo, hi int) int { return (hi - lo + tileCols - 1) / tileCols }

// quarterTile returns the weight rows of tile q of [lo, hi), one from
// each of its four quarters, and how many of them are rows: a short tile
// repeats its first row, whose extra sums are computed and dropped.
func quarterTile(lo, hi, quarter, q int) (rows [tileCols]int, nw int) {
	for j := range tileCols {
		if r := lo + j*quarter + q; r < hi {
			rows[nw] = r
			nw++
		}
	}
	for j := nw; j < tileCols; j++ {
		rows[j] = rows[0]
	}
	return rows, nw
}

// mulHalf is MulRows for the 16-bit float formats. A batch of one tile's
// rows widens each weight vector in registers; a larger batch widens each
// tile of weight rows once into scratch and multiplies it as F32, so the
// widening is not repeated for every tile of input rows: in the first
// input tile's pass where widenTile is given (mulWidening), in a pass of
// its own otherwise. Widening is exact, so all give the same bits.
func mulHalf(data []uint16, rows, cols int, fused tiling[float32, uint16], widenTile widenTileFunc, widenRow func(dst []float32, src []uint16), out, x []float32, n, lo, hi int) {
	if n <= tileRows {
		mulTiled(data, cols, fused, out, rows, lo, x, n, lo, hi)
		return
	}
	buf := getScratch(tileCols * cols)
	defer putScratch(buf)
	if widenTile != nil && cols >= lanes {
		mulWidening(data, rows, cols, widenTile, widenRow, *buf, out, x, n, lo, hi)
		return
	}
	for r := lo; r < hi; r += tileCols {
		nw := min(tileCols, hi-r)
		for j := range nw {
			widenRow((*buf)[j*cols:(j+1)*cols], data[(r+j)*cols:(r+j+1)*cols])
		}
		// The next tile's weights come from memory while this one is
		// multiplied: the widening pass would otherwise wait for them.
		prefetchRows(data, cols, r+tileCols, min(r+2*tileCols, hi))
		mulTiled(*buf, cols, kernels.f32, out, rows, r, x, n, 0, nw)
	}
}

// mulWidening is mulHalf with a tile kernel that stores what it widens:
// each tile of weight rows (one from each quarter of [lo, hi), as
// mulTiled's) is widened into buf while it multiplies the first tile of
// input rows, in one pass over the weights, and the other input rows
// multiply the widened rows as F32. The bits are those of mulHalf's other
// ways.
func mulWidening(data []uint16, rows, cols int, widenTile widenTileFunc, widenRow func(dst []float32, src []uint16), buf, out, x []float32, n, lo, hi int) {
	k := cols &^ (lanes - 1)
	f32 := kernels.f32
	var acc [tileRows * tileCols]float32
	var w [tileCols]*uint16
	var widened [tileCols]*float32
	bufRows := [tileCols]int{0, 1, 2, 3}
	quarter := quarters(lo, hi)
	for q := range quarter {
		wRows, nw := quarterTile(lo, hi, quarter, q)
		for j, r := range wRows {
			// A short tile's extra rows repeat its first, here too.
			b := j
			if j >= nw {
				b = 0
			}
			w[j], widened[j] = &data[r*cols], &buf[b*cols]
		}
		widenTile(&acc, x, cols, tileRows, &w, k, &widened)
		for j, r := range wRows[:nw] {
			widenRow(buf[j*cols+k:(j+1)*cols], data[r*cols+k:(r+1)*cols])
		}
		finishTile(&acc, f32.mul, buf, cols, k, bufRows[:nw], wRows[:nw], out, rows, x, tileRows)
		for t := tileRows; t < n; t += tileRows {
			nx := min(tileRows, n-t)
			f32.tile(&acc, x[t*cols:], cols, nx, &widened, k)
			finishTile(&acc, f32.mul, buf, cols, k, bufRows[:nw], wRows[:nw], out[t*rows:], rows, x[t*cols:], nx)
		}
	}
}

var scratchPool sync.Pool

// getScratch returns a buffer of at least n float32s from the pool.
func getScratch(n int) *[]float32 {
	if b, ok := scratchPool.Get().(*[]float32); ok && cap(*b) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]float32, n)
	return &b
}

func putScratch(b *[]float32) { scratchPool.Put(b) }

// tileGo is the portable tiling for any weight element type.
func tileGo[W any](widen func(W) float32) tiling[float32, W] {
	return tiling[float32, W]{tile: tileGoFunc(widen), block: lanes, mul: func(x float32, w W) float32 { return x * widen(w) }}
}

func tileGoFunc[W any](widen func(W) float32) tileFunc[float32, W] {
	return func(acc *[tileRows * tileCols]float32, x []float32, xStride, nx int, w *[tileCols]*W, k int) {
		clear(acc[:])
		for j := range tileCols {
			wr := unsafeSlice(w[j], k)
			for i := range nx {
				xr := x[i*xStride : i*xStride+k]
				var l [lanes]float32
				for c := 0; c < k; c += lanes {
					for q := range lanes {
						l[q] = float32(xr[c+q]*widen(wr[c+q])) + l[q]
					}
				}
				acc[i*tileCols+j] = reduceLanes(&l)
			}
		}
	}
}

// reduceLanes adds 16 lanes in the kernels' fixed tree.
func reduceLanes(l *[lanes]float32) float32 {
	var h [8]float32
	for i := range 8 {
		h[i] = l[i] + l[i+8]
	}
	for i := range 4 {
		h[i] += h[i+4]
	}
	for i := range 2 {
		h[i] += h[i+2]
	}
	return h[0] + h[1]
}

func widenF32(v float32) float32 { return v }

// widenBF16 widens bfloat16 bits exactly: they are the high half of a
// float32.
func widenBF16(v uint16) float32 { return math.Float32frombits(uint32(v) << 16) }

func widenF16(v uint16) float32 { return safetensors.F16ToFloat32(v) }

// f32Matrix, bf16Matrix and f16Matrix are the float formats.
type (
	f32Matrix struct {
		shape
		data []float32
	}
	bf16Matrix struct {
		shape
		data []uint16
	}
	f16Matrix struct {
		shape
		data []uint16
	}
)

func newF32Matrix(rows, cols int, data []byte) Matrix {
	return &f32Matrix{shape{rows, cols}, view[float32](data)}
}

func newBF16Matrix(rows, cols int, data []byte) Matrix {
	return &bf16Matrix{shape{rows, cols}, view[uint16](data)}
}

func newF16Matrix(rows, cols int, data []byte) Matrix {
	return &f16Matrix{shape{rows, cols}, view[uint16](data)}
}

func (m *f32Matrix) Format() Format  { return F32 }
func (m *bf16Matrix) Format() Format { return BF16 }
func (m *f16Matrix) Format() Format  { return F16 }

func (m *f32Matrix) Bytes() int64  { return int64(len(m.data)) * 4 }
func (m *bf16Matrix) Bytes() int64 { return int64(len(m.data)) * 2 }
func (m *f16Matrix) Bytes() int64  { return int64(len(m.data)) * 2 }

func (m *f32Matrix) Row(dst []float32, r int) {
	copy(dst[:m.cols], m.data[r*m.cols:(r+1)*m.cols])
}

func (m *bf16Matrix) Row(dst []float32, r int) {
	for i, v := range m.data[r*m.cols : (r+1)*m.cols] {
		dst[i] = widenBF16(v)
	}
}

func (m *f16Matrix) Row(dst []float32, r int) {
	for i, v := range m.data[r*m.cols : (r+1)*m.cols] {
		dst[i] = widenF16(v)
	}
}

func (m *f32Matrix) MulRows(out, x []float32, n, lo, hi int) {
	mulTiled(m.data, m.cols, kernels.f32, out, m.rows, lo, x, n, lo, hi)
}

func (m *bf16Matrix) MulRows(out, x []float32, n, lo, hi int) {
	mulHalf(m.data, m.rows, m.cols, kernels.bf16, kernels.bf16Widen, kernels.widenBF16, out, x, n, lo, hi)
}

func (m *f16Matrix) MulRows(out, x []float32, n, lo, hi int) {
	mulHalf(m.data, m.rows, m.cols, kernels.f16, nil, kernels.widenF16, out, x, n, lo, hi)
}

// widenRowsGo widens src into dst element by element: the portable row
// widening, and the tail after a SIMD one.
func widenRowsGo(widen func(uint16) float32) func(dst []float32, src []uint16) {
	return func(dst []float32, src []uint16) {
		dst = dst[:len(src)]
		for i, v := range src {
			dst[i] = widen(v)
		}
	}
}

// mulRowsBF16 is MulRows in the BF16 compute mode, over inputs already
// rounded to bfloat16.
func (m *bf16Matrix) mulRowsBF16(out []float32, xb []uint16, n, lo, hi int) {
	mulTiled(m.data, m.cols, bf16DotTiling, out, m.rows, lo, xb, n, lo, hi)
}
