package kernel

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/moegrid/moegrid/model/safetensors"
)

// The block-quantized formats, with GGML's block layouts and names.
const (
	// Q8_0 blocks 32 values as an F16 scale and 32 int8s: v = d·q.
	Q8_0 Format = "Q8_0"
	// Q4_0 blocks 32 values as an F16 scale and 32 nibbles: v = d·(q-8).
	Q4_0 Format = "Q4_0"
	// Q4_K super-blocks 256 values as eight 32-value sub-blocks of 4-bit
	// values, each with a 6-bit scale and min under F16 super-scales:
	// v = d·sc·q − dmin·m.
	Q4_K Format = "Q4_K"
	// Q5_K is Q4_K with a fifth bit per value.
	Q5_K Format = "Q5_K"
	// Q6_K super-blocks 256 values as sixteen 16-value sub-blocks of
	// 6-bit values, each with an int8 scale under an F16 super-scale:
	// v = d·sc·(q−32).
	Q6_K Format = "Q6_K"
)

// quantFormat is one block-quantized format: its block layout, the exact
// dequantization of one block, and a quantizer of one block.
type quantFormat struct {
	format                Format
	blockSize, blockBytes int
	// dequantize writes the blockSize values of block b into dst.
	dequantize func(dst []float32, b []byte)
	// quantize encodes the blockSize values of x into block dst.
	quantize func(dst []byte, x []float32)
	// dotInt8 is the portable product of a row in the int8 compute mode.
	dotInt8 int8Dot
}

// spec is the format's entry in formats.
func (q *quantFormat) spec() formatSpec {
	return formatSpec{
		blockSize:  q.blockSize,
		blockBytes: q.blockBytes,
		new: func(rows, cols int, data []byte) Matrix {
			return &quantMatrix{shape: shape{rows, cols}, q: q, data: data, rowBytes: cols / q.blockSize * q.blockBytes, avx2: simdRow(q.format, PathAVX2), avx512: simdRow(q.format, PathAVX512), fused2: fusedOne(q.format, PathAVX2), fused512: fusedOne(q.format, PathAVX512), fused512x4: fusedFour(q.format, PathAVX512), int8avx2: int8Kernel(q.format, PathAVX2), int8avx512: int8Kernel(q.format, PathAVX512)}
		},
	}
}

// quantMatrix is a matrix in a block-quantized format; its data usually
// aliases a mapped GGUF file.
type quantMatrix struct {
	shape
	q        *quantFormat
	data     []byte
	rowBytes int
	// avx2 and avx512 dequantize a row on those paths, to the same bits
	// as the portable code; nil where the CPU lacks the instructions.
	avx2, avx512 func(dst []float32, row []byte)
	// fused512 and fused2 multiply one input row by four weight rows
	// without dequantizing them to memory, to the same bits as the F32
	// tile kernel on the dequantized rows, on the avx512 and avx2 paths;
	// nil where there is none.
	fused512, fused2 func(acc *[tileRows * tileCols]float32, x *float32, w *[tileCols]*byte, nb int)
	// fused512x4 is fused512 for up to four input rows.
	fused512x4 func(acc *[tileRows * tileCols]float32, x *[tileRows]*float32, w *[tileCols]*byte, nb int)
	// int8avx2 and int8avx512 are the int8-mode products on the SIMD
	// paths, to the same bits as dotInt8.
	int8avx2, int8avx512 int8Kernels
}

func (m *quantMatrix) Format() Format { return m.q.format }
func (m *quantMatrix) Bytes() int64   { return int64(len(m.data)) }

func (m *quantMatrix) Row(dst []float32, r int) {
	row := m.data[r*m.rowBytes : (r+1)*m.rowBytes]
	simd := m.avx512
	if kernels.path != PathAVX512 {
		simd = nil
		if kernels.path == PathAVX2 {
			simd = m.avx2
		}
	}
	if simd != nil {
		simd(dst[:m.cols], row)
		return
	}
	bs, bb := m.q.blockSize, m.q.blockBytes
	for b := range m.cols / bs {
		m.q.dequantize(dst[b*bs:(b+1)*bs], row[b*bb:(b+1)*bb])
	}
}

// MulRows dequantizes each tile of weight rows once into scratch and
// multiplies it with the F32 kernel, so its numbers are exactly those of
// the F32 matrix of the dequantized weights, on every path. Every
// quantized row length is a multiple of 32, so the vector part covers
// whole rows.
func (m *quantMatrix) MulRows(out, x []float32, n, lo, hi int) {
	if n <= 0 || lo >= hi {
		return
	}
	switch kernels.path {
	case PathAVX512:
		switch {
		case n == 1 && m.fused512 != nil:
			m.mulFused(out, x, m.fused512, lo, hi)
			return
		case n <= tileRows && m.fused512x4 != nil:
			m.mulFused4(out, x, n, lo, hi)
			return
		}
	case PathAVX2:
		if n == 1 && m.fused2 != nil {
			m.mulFused(out, x, m.fused2, lo, hi)
			return
		}
	}
	cols := m.cols
	buf := getScratch(tileCols * cols)
	defer putScratch(buf)
	for r := lo; r < hi; r += tileCols {
		nw := min(tileCols, hi-r)
		for j := range nw {
			m.Row((*buf)[j*cols:(j+1)*cols], r+j)
		}
		mulTiled(*buf, cols, kernels.f32, out, m.rows, r, x, n, 0, nw)
	}
}

// mulFused is MulRows for one input row with the fused kernel, its tiles
// of rows from the four quarters of [lo, hi) as mulTiled's are: four
// adjacent rows read side by side stream from memory at about half the
// rate (BenchmarkQuantStream).
func (m *quantMatrix) mulFused(out, x []float32, fused func(acc *[tileRows * tileCols]float32, x *float32, w *[tileCols]*byte, nb int), lo, hi int) {
	var (
		acc [tileRows * tileCols]float32
		w   [tileCols]*byte
	)
	_ = x[m.cols-1]
	nb := m.cols / m.q.blockSize
	quarter := quarters(lo, hi)
	for q := range quarter {
		rows, nw := quarterTile(lo, hi, quarter, q)
		for j, r := range rows {
			w[j] = &m.data[r*m.rowBytes]
		}
		fused(&acc, &x[0], &w, nb)
		for j, r := range rows[:nw] {
			out[r] = acc[j]
		}
	}
}

// mulFused4 is MulRows for up to four input rows with the fused kernel,
// tiled as mulFused is; missing input rows repeat the last one, and their
// sums are dropped.
func (m *quantMatrix) mulFused4(out, x []float32, n, lo, hi int) {
	var (
		acc [tileRows * tileCols]float32
		w   [tileCols]*byte
		xs  [tileRows]*float32
	)
	_ = x[n*m.cols-1]
	for i := range tileRows {
		xs[i] = &x[min(i, n-1)*m.cols]
	}
	nb := m.cols / m.q.blockSize
	quarter := quarters(lo, hi)
	for q := range quarter {
		rows, nw := quarterTile(lo, hi, quarter, q)
		for j, r := range rows {
			w[j] = &m.data[r*m.rowBytes]
		}
		m.fused512x4(&acc, &xs, &w, nb)
		for i := range n {
			for j, r := range rows[:nw] {
				out[i*m.rows+r] = acc[i*tileCols+j]
			}
		}
	}
}

// Quantize encodes the row-major [rows, cols] matrix x in format f, as
// GGML stores it: rows of blocks. For the float formats it rounds to
// nearest even; for the quantized ones it follows GGML's reference
// quantizers (quantize_row_*_ref), so that the bytes equal
// llama-quantize's without an importance matrix; they refuse infinities
// and NaNs.
func Quantize(f Format, rows, cols int, x []float32) ([]byte, error) {
	size, err := f.MatrixBytes(rows, cols)
	if err != nil {
		return nil, err
	}
	if len(x) != rows*cols {
		return nil, fmt.Errorf("kernel: quantize [%d, %d] from %d values", rows, cols, len(x))
	}
	out := make([]byte, size)
	switch f {
	case F32:
		copy(out, bytesOf(x))
		return out, nil
	case BF16, F16:
		conv := safetensors.Float32ToF16
		if f == BF16 {
			conv = safetensors.Float32ToBF16
		}
		For(len(x), 1<<16, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				binary.LittleEndian.PutUint16(out[2*i:], conv(x[i]))
			}
		})
		return out, nil
	}
	q := quantFormats[f]
	// GGML's quantizers turn an infinity or NaN into garbage scales (and
	// C into undefined conversions); refuse them instead.
	for i, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("kernel: quantize to %s: value %d (row %d) is %v", f, i, i/cols, v)
		}
	}
	blocks := len(x) / q.blockSize
	For(blocks, max(1, 4096/q.blockSize), func(lo, hi int) {
		for b := lo; b < hi; b++ {
			q.quantize(out[b*q.blockBytes:(b+1)*q.blockBytes], x[b*q.blockSize:(b+1)*q.blockSize])
		}
	})
	return out, nil
}

// quantFormats lists the quantized formats for Quantize.
var quantFormats = map[Format]*quantFormat{
	Q8_0: &q8_0,
	Q4_0: &q4_0,
	Q4_K: &q4_K,
	Q5_K: &q5_K,
	Q6_K: &q6_K,
}

// halfAt reads the F16 value at b[0:2].
func halfAt(b []byte) float32 { return safetensors.F16ToFloat32(uint16(b[0]) | uint16(b[1])<<8) }

// putHalf stores f as F16 at b[0:2], rounding to nearest even.
func putHalf(b []byte, f float32) {
	h := safetensors.Float32ToF16(f)
	b[0], b[1] = byte(h), byte(h>>8)
}

// nearestInt rounds f to the nearest integer, ties to even, by GGML's
// trick of adding 1.5·2²³, which also fixes what it returns for values
// too large to round that way.
func nearestInt(f float32) int {
	v := f + 12582912
	return int(math.Float32bits(v)&0x7fffff) - 0x400000
}

// maxAbs is the value of largest magnitude in x (the first of equals) and
// that magnitude.
func maxAbs(x []float32) (v, amax float32) {
	for _, xi := range x {
		if a := abs32(xi); a > amax {
			amax, v = a, xi
		}
	}
	return v, amax
}

func abs32(f float32) float32 { return math.Float32frombits(math.Float32bits(f) &^ (1 << 31)) }
