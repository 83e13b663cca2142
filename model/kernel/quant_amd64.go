package kernel

import "unsafe"

// The AVX2 and AVX-512 dequantizers of quant_amd64.s and
// quant_avx512_amd64.s. The K-quants' scalar work (the unpacked 6-bit
// sub-block scales times the super-scales) stays in Go; the assembly does
// the values, with the same operations as the portable code.

//go:noescape
func dequantQ8_0AVX2(dst *float32, blocks *byte, nb int)

//go:noescape
func dequantQ4_0AVX2(dst *float32, blocks *byte, nb int)

//go:noescape
func dequantQ4KAVX2(dst *float32, qs *byte, dsc, dmn *[8]float32)

//go:noescape
func dequantQ5KAVX2(dst *float32, qh, qs *byte, dsc, dmn *[8]float32)

//go:noescape
func dequantQ6KAVX2(dst *float32, b *byte, ds *[16]float32)

//go:noescape
func dequantQ8_0AVX512(dst *float32, blocks *byte, nb int)

//go:noescape
func dequantQ4_0AVX512(dst *float32, blocks *byte, nb int)

//go:noescape
func dequantQ4KAVX512(dst *float32, qs *byte, dsc, dmn *[8]float32)

//go:noescape
func dequantQ5KAVX512(dst *float32, qh, qs *byte, dsc, dmn *[8]float32)

//go:noescape
func dequantQ6KAVX512(dst *float32, b *byte, ds *[16]float32)

// rowKernels are one instruction set's dequantizers.
type rowKernels struct {
	q8_0, q4_0 func(dst *float32, blocks *byte, nb int)
	q4K        func(dst *float32, qs *byte, dsc, dmn *[8]float32)
	q5K        func(dst *float32, qh, qs *byte, dsc, dmn *[8]float32)
	q6K        func(dst *float32, b *byte, ds *[16]float32)
}

var (
	avx2Rows   = rowKernels{dequantQ8_0AVX2, dequantQ4_0AVX2, dequantQ4KAVX2, dequantQ5KAVX2, dequantQ6KAVX2}
	avx512Rows = rowKernels{dequantQ8_0AVX512, dequantQ4_0AVX512, dequantQ4KAVX512, dequantQ5KAVX512, dequantQ6KAVX512}
)

// simdRow returns the row dequantizer of format f on path p, or nil for
// the portable path or where this CPU lacks p's instructions.
func simdRow(f Format, p Path) func(dst []float32, row []byte) {
	var k *rowKernels
	switch {
	case p == PathAVX512 && hasAVX512:
		k = &avx512Rows
	case p == PathAVX2 && hasAVX2:
		k = &avx2Rows
	default:
		return nil
	}
	switch f {
	case Q8_0:
		return func(dst []float32, row []byte) { rowQ32(dst, row, 34, k.q8_0) }
	case Q4_0:
		return func(dst []float32, row []byte) { rowQ32(dst, row, 18, k.q4_0) }
	case Q4_K:
		return func(dst []float32, row []byte) { rowQ4K(dst, row, k.q4K) }
	case Q5_K:
		return func(dst []float32, row []byte) { rowQ5K(dst, row, k.q5K) }
	case Q6_K:
		return func(dst []float32, row []byte) { rowQ6K(dst, row, k.q6K) }
	}
	return nil
}

// rowQ32 dequantizes a row of 32-value blocks of blockBytes each.
func rowQ32(dst []float32, row []byte, blockBytes int, asm func(dst *float32, blocks *byte, nb int)) {
	nb := len(row) / blockBytes
	_ = dst[nb*32-1]
	asm(&dst[0], unsafe.SliceData(row), nb)
}

// kScales unpacks a Q4_K or Q5_K super-block's sub-block scales and mins,
// multiplied by its super-scales as the portable code does; scaleMinK4's
// unpacking, four sub-blocks at a time.
func kScales(b []byte, dsc, dmn *[8]float32) {
	d, dmin := halfAt(b), halfAt(b[2:])
	s := (*[12]byte)(b[4:16])
	for j := range 4 {
		dsc[j] = d * float32(s[j]&63)
		dmn[j] = dmin * float32(s[j+4]&63)
		dsc[j+4] = d * float32(s[j+8]&0xf|(s[j]>>6)<<4)
		dmn[j+4] = dmin * float32(s[j+8]>>4|(s[j+4]>>6)<<4)
	}
}

func rowQ4K(dst []float32, row []byte, asm func(dst *float32, qs *byte, dsc, dmn *[8]float32)) {
	var dsc, dmn [8]float32
	nb := len(row) / 144
	_ = dst[nb*qk-1]
	for b := range nb {
		blk := row[b*144 : (b+1)*144]
		kScales(blk, &dsc, &dmn)
		asm(&dst[b*qk], &blk[16], &dsc, &dmn)
	}
}

func rowQ5K(dst []float32, row []byte, asm func(dst *float32, qh, qs *byte, dsc, dmn *[8]float32)) {
	var dsc, dmn [8]float32
	nb := len(row) / 176
	_ = dst[nb*qk-1]
	for b := range nb {
		blk := row[b*176 : (b+1)*176]
		kScales(blk, &dsc, &dmn)
		asm(&dst[b*qk], &blk[16], &blk[48], &dsc, &dmn)
	}
}

func rowQ6K(dst []float32, row []byte, asm func(dst *float32, b *byte, ds *[16]float32)) {
	var ds [16]float32
	nb := len(row) / 210
	_ = dst[nb*qk-1]
	for b := range nb {
		blk := row[b*210 : (b+1)*210]
		d := halfAt(blk[208:])
		for i, s := range blk[192:208] {
			ds[i] = d * float32(int8(s))
		}
		asm(&dst[b*qk], &blk[0], &ds)
	}
}
