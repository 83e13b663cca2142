package kernel

import (
	"math"
	"sync"
)

// The int8 compute mode multiplies block-quantized weights by activations
// quantized to 8 bits, as llama.cpp does: each block of activations gets
// a float32 scale dx = max|x|/127 and the int8 values round(x/dx), a block
// being 32 values for Q8_0 and Q4_0 and a whole 256-value super-block for
// the K formats (llama.cpp's Q8_K). The products of a block are then
// integer dot products, exact in any order; only their combination is in
// float32, in the fixed order that the portable code below spells out and
// the assembly repeats, so that every path, batch and thread split gives
// the same bits.
//
// Each weight block b (32 values, or a super-block) yields eight int32
// lane sums, lane l the products of values 4l to 4l+3 of each of its
// 32-value sub-blocks, each weight times its integer sub-block scale (1
// for Q8_0 and Q4_0). The lanes carry over eight float32 accumulators:
// acc[l] += float32(lane[l])·s_b, the product rounded before the sum,
// where s_b is the block's float32 weight scale times dx_b. Q4_K and Q5_K
// add their mins, dmin·dx·m_j·Σx of sub-block j, into eight more
// accumulators, one per sub-block. A row's result is reduce8 of the first
// accumulators less reduce8 of the second. The integers stay below 2²⁴,
// so each lane converts exactly. One float step per super-block instead
// of one per 32 values is what makes the K formats' kernels fast.

// int8Block is the number of activations whose sum is kept (the K
// formats' mins need it per sub-block) and the smallest that share a
// scale.
const int8Block = 32

// int8Act is a row-major [rows, cols] activation quantized for the int8
// mode: per block values a scale d, per 32 values their sum, and the
// values q.
type int8Act struct {
	block int
	q     []int8
	d     []float32
	sum   []int32
}

var int8Pool sync.Pool

// quantizeInt8 quantizes x, a multiple of block values, into a pooled
// activation with a scale per block (a multiple of 32); putInt8 gives it
// back. A block whose largest magnitude is not finite gets a NaN scale,
// so that the products it enters are NaN, as they are in the exact mode.
func quantizeInt8(x []float32, block int) *int8Act {
	nb, ns := len(x)/block, len(x)/int8Block
	a, ok := int8Pool.Get().(*int8Act)
	if !ok {
		a = new(int8Act)
	}
	if cap(a.q) < len(x) {
		a.q = make([]int8, len(x))
	}
	if cap(a.d) < nb {
		a.d = make([]float32, nb)
	}
	if cap(a.sum) < ns {
		a.sum = make([]int32, ns)
	}
	a.block, a.q, a.d, a.sum = block, a.q[:len(x)], a.d[:nb], a.sum[:ns]
	// A batch's rows (a prefill's, say) quantize on every worker: on one,
	// they kept the others waiting before each product.
	grain := max(nb, 1)
	if len(x) >= parallelQuantize {
		grain = max(1, parallelQuantize/block)
	}
	For(nb, grain, func(lo, hi int) {
		for b := lo; b < hi; b++ {
			a.quantizeBlock(x, b)
		}
	})
	return a
}

// parallelQuantize is the number of activations from which quantizeInt8
// splits over the workers.
const parallelQuantize = 16 << 10

// quantizeBlock quantizes block b of x into a.
func (a *int8Act) quantizeBlock(x []float32, b int) {
	block := a.block
	xs := x[b*block : (b+1)*block]
	q := a.q[b*block : (b+1)*block]
	sum := a.sum[b*block/int8Block : (b+1)*block/int8Block]
	clear(sum)
	_, amax := maxAbs(xs)
	// maxAbs passes over a NaN, so it is looked for on its own.
	if math.IsInf(float64(amax), 0) || hasNaN(xs) {
		clear(q)
		a.d[b] = float32(math.NaN())
		return
	}
	d := amax / 127
	// A scale too small to invert (or zero) leaves the block zero.
	if d < 0x1p-120 {
		clear(q)
		a.d[b] = 0
		return
	}
	id := 1 / d
	for i, v := range xs {
		n := int32(max(-127, min(127, nearestInt(float32(v*id)))))
		q[i] = int8(n)
		sum[i/int8Block] += n
	}
	a.d[b] = d
}

func putInt8(a *int8Act) { int8Pool.Put(a) }

// int8ActBlock is the activation block of the format's int8 mode: the
// K formats take one scale per super-block.
func (m *quantMatrix) int8ActBlock() int {
	if m.q.blockSize == qk {
		return qk
	}
	return int8Block
}

func hasNaN(x []float32) bool {
	for _, v := range x {
		if v != v {
			return true
		}
	}
	return false
}

// int8Input is implemented by matrices that multiply int8 activations in
// the int8 compute mode, quantized in blocks of int8ActBlock values.
type int8Input interface {
	int8ActBlock() int
	mulRowsInt8(out []float32, a *int8Act, cols, n, lo, hi int)
}

// int8Dot is one format's portable int8-mode product of a weight row with
// the activation row q, its scales d (one a weight block) and sums.
type int8Dot func(row []byte, q []int8, d []float32, sum []int32) float32

// int8Rows is how many activation rows the four-row int8 kernels take.
const int8Rows = 4

// int8RowsFunc is an assembly int8-mode product of the activation row q,
// d, sum with each of rows weight rows of nb weight blocks from w on, one
// after another in memory: out[i] gets row i's.
type int8RowsFunc func(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)

// int8Kernels are a format's assembly int8-mode products: rows, and four,
// which gives out the products of the weight row w of nb weight blocks
// with four activation rows, row t at q + t·qs values, d + t·ds bytes and
// sum + t·ss bytes. Both are nil where the format has no assembly.
type int8Kernels struct {
	rows int8RowsFunc
	four func(out *[int8Rows]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds, ss int)
}

// reduce8 adds eight lanes in the tree of reduceLanes' last steps.
func reduce8(l *[8]float32) float32 {
	var h [4]float32
	for i := range 4 {
		h[i] = l[i] + l[i+4]
	}
	h[0] += h[2]
	h[1] += h[3]
	return h[0] + h[1]
}

// mulRowsInt8 is MulRows in the int8 mode, with the assembly products
// where this path has them. One weight row at a time, front to back, is
// the order that streams from memory fastest; a batch takes each row four
// activation rows at a time while it is in cache.
func (m *quantMatrix) mulRowsInt8(out []float32, a *int8Act, cols, n, lo, hi int) {
	nb32, nd := cols/int8Block, cols/a.block
	nb := cols / m.q.blockSize
	k := m.int8avx2
	if kernels.path == PathAVX512 {
		k = m.int8avx512
	}
	if kernels.path == PathPortable || k.rows == nil {
		for r := lo; r < hi; r++ {
			row := m.data[r*m.rowBytes : (r+1)*m.rowBytes]
			for t := range n {
				out[t*m.rows+r] = m.q.dotInt8(row, a.q[t*cols:(t+1)*cols], a.d[t*nd:(t+1)*nd], a.sum[t*nb32:(t+1)*nb32])
			}
		}
		return
	}
	if n == 1 {
		k.rows(&out[lo], &m.data[lo*m.rowBytes], hi-lo, &a.q[0], &a.d[0], &a.sum[0], nb)
		return
	}
	var res [int8Rows]float32
	for r := lo; r < hi; r++ {
		w := &m.data[r*m.rowBytes]
		t := 0
		for ; t+int8Rows <= n; t += int8Rows {
			k.four(&res, w, &a.q[t*cols], &a.d[t*nd], &a.sum[t*nb32], nb, cols, 4*nd, 4*nb32)
			for j, v := range res {
				out[(t+j)*m.rows+r] = v
			}
		}
		for ; t < n; t++ {
			k.rows(&out[t*m.rows+r], w, 1, &a.q[t*cols], &a.d[t*nd], &a.sum[t*nb32], nb)
		}
	}
}

// addLanes adds block b's lane sums p, times s, into acc.
func addLanes(acc *[8]float32, p *[8]int32, s float32) {
	for l, v := range p {
		acc[l] += float32(float32(v) * s)
	}
}

func dotQ8_0Int8(row []byte, q []int8, d []float32, _ []int32) float32 {
	var acc [8]float32
	for b := range len(row) / 34 {
		blk := row[b*34 : (b+1)*34]
		x := q[32*b : 32*b+32]
		var p [8]int32
		for i, v := range blk[2:34] {
			p[i/4] += int32(int8(v)) * int32(x[i])
		}
		addLanes(&acc, &p, halfAt(blk)*d[b])
	}
	return reduce8(&acc)
}

func dotQ4_0Int8(row []byte, q []int8, d []float32, _ []int32) float32 {
	var acc [8]float32
	for b := range len(row) / 18 {
		blk := row[b*18 : (b+1)*18]
		x := q[32*b : 32*b+32]
		var p [8]int32
		for i, v := range blk[2:18] {
			p[i/4] += (int32(v&0xf) - 8) * int32(x[i])
			p[4+i/4] += (int32(v>>4) - 8) * int32(x[16+i])
		}
		addLanes(&acc, &p, halfAt(blk)*d[b])
	}
	return reduce8(&acc)
}

// dotKInt8 is the int8-mode product of a Q4_K or Q5_K row, with
// blockBytes per super-block and value returning value i of sub-block j.
func dotKInt8(row []byte, q []int8, d []float32, sum []int32, blockBytes int, value func(blk []byte, j, i int) int32) float32 {
	var acc, mins [8]float32
	for b := range len(row) / blockBytes {
		blk := row[b*blockBytes : (b+1)*blockBytes]
		dw, dmin, dx := halfAt(blk), halfAt(blk[2:]), d[b]
		var p [8]int32
		for j := range 8 {
			sc, m := scaleMinK4(j, blk[4:16])
			for i, v := range q[qk*b+32*j : qk*b+32*j+32] {
				p[i/4] += int32(sc) * value(blk, j, i) * int32(v)
			}
			mins[j] += float32(float32(int32(m)*sum[8*b+j]) * (dmin * dx))
		}
		addLanes(&acc, &p, dw*dx)
	}
	return reduce8(&acc) - reduce8(&mins)
}

func dotQ4KInt8(row []byte, q []int8, d []float32, sum []int32) float32 {
	return dotKInt8(row, q, d, sum, 144, func(blk []byte, j, i int) int32 {
		return int32(blk[16+32*(j/2)+i] >> (4 * (j % 2)) & 0xf)
	})
}

func dotQ5KInt8(row []byte, q []int8, d []float32, sum []int32) float32 {
	return dotKInt8(row, q, d, sum, 176, func(blk []byte, j, i int) int32 {
		return int32(blk[48+32*(j/2)+i]>>(4*(j%2))&0xf | (blk[16+i]>>j&1)<<4)
	})
}

// dotQ6KInt8 is the int8-mode product of a Q6_K row: 32-value block b of
// a super-block is quarter b%4 of half b/4, its sub-blocks 2b and 2b+1.
func dotQ6KInt8(row []byte, q []int8, d []float32, _ []int32) float32 {
	var acc [8]float32
	for sb := range len(row) / 210 {
		blk := row[sb*210 : (sb+1)*210]
		var p [8]int32
		for b := range 8 {
			h, quarter := b/4, b%4
			ql := blk[64*h+32*(quarter%2) : 64*h+32*(quarter%2)+32]
			qh := blk[128+32*h : 128+32*h+32]
			for i, v := range q[qk*sb+32*b : qk*sb+32*b+32] {
				w := int32(ql[i]>>(4*(quarter/2))&0xf|(qh[i]>>(2*quarter)&3)<<4) - 32
				sc := int32(int8(blk[192+2*b+i/16]))
				p[i/4] += sc * w * int32(v)
			}
		}
		addLanes(&acc, &p, halfAt(blk[208:])*d[sb])
	}
	return reduce8(&acc)
}
