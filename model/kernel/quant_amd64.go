package kernel

import "unsafe"

// The AVX2 dequantizers of quant_amd64.s. Scalar work (the F16 scales and
// the unpacked 6-bit sub-block scales) stays in Go; the assembly does the
// values, with the same operations as the portable code.

//go:noescape
func dequantQ8_0AVX2(dst *float32, blocks *byte, d *float32, nb int)

//go:noescape
func dequantQ4_0AVX2(dst *float32, blocks *byte, d *float32, nb int)

//go:noescape
func dequantQ4KAVX2(dst *float32, qs *byte, dsc, dmn *[8]float32)

//go:noescape
func dequantQ5KAVX2(dst *float32, qh, qs *byte, dsc, dmn *[8]float32)

//go:noescape
func dequantQ6KAVX2(dst *float32, b *byte, ds *[16]float32)

// simdRow returns the SIMD row dequantizer of format f, or nil where this
// CPU has none.
func simdRow(f Format) func(dst []float32, row []byte) {
	if !hasAVX2 {
		return nil
	}
	switch f {
	case Q8_0:
		return func(dst []float32, row []byte) { rowQ32AVX2(dst, row, 34, dequantQ8_0AVX2) }
	case Q4_0:
		return func(dst []float32, row []byte) { rowQ32AVX2(dst, row, 18, dequantQ4_0AVX2) }
	case Q4_K:
		return rowQ4KAVX2
	case Q5_K:
		return rowQ5KAVX2
	case Q6_K:
		return rowQ6KAVX2
	}
	return nil
}

// rowQ32AVX2 dequantizes a row of 32-value blocks of blockBytes each,
// an F16 scale first, converting the scales in Go a chunk at a time.
func rowQ32AVX2(dst []float32, row []byte, blockBytes int, asm func(dst *float32, blocks *byte, d *float32, nb int)) {
	const chunk = 64
	var d [chunk]float32
	nb := len(row) / blockBytes
	_ = dst[nb*32-1]
	for b0 := 0; b0 < nb; b0 += chunk {
		n := min(chunk, nb-b0)
		for i := range n {
			d[i] = halfAt(row[(b0+i)*blockBytes:])
		}
		asm(&dst[b0*32], unsafe.SliceData(row[b0*blockBytes:]), &d[0], n)
	}
}

// kScales unpacks a Q4_K or Q5_K super-block's sub-block scales and mins,
// multiplied by its super-scales as the portable code does.
func kScales(b []byte, dsc, dmn *[8]float32) {
	d, dmin := halfAt(b), halfAt(b[2:])
	for j := range 8 {
		sc, m := scaleMinK4(j, b[4:16])
		dsc[j], dmn[j] = d*float32(sc), dmin*float32(m)
	}
}

func rowQ4KAVX2(dst []float32, row []byte) {
	var dsc, dmn [8]float32
	nb := len(row) / 144
	_ = dst[nb*qk-1]
	for b := range nb {
		blk := row[b*144 : (b+1)*144]
		kScales(blk, &dsc, &dmn)
		dequantQ4KAVX2(&dst[b*qk], &blk[16], &dsc, &dmn)
	}
}

func rowQ5KAVX2(dst []float32, row []byte) {
	var dsc, dmn [8]float32
	nb := len(row) / 176
	_ = dst[nb*qk-1]
	for b := range nb {
		blk := row[b*176 : (b+1)*176]
		kScales(blk, &dsc, &dmn)
		dequantQ5KAVX2(&dst[b*qk], &blk[16], &blk[48], &dsc, &dmn)
	}
}

func rowQ6KAVX2(dst []float32, row []byte) {
	var ds [16]float32
	nb := len(row) / 210
	_ = dst[nb*qk-1]
	for b := range nb {
		blk := row[b*210 : (b+1)*210]
		d := halfAt(blk[208:])
		for i, s := range blk[192:208] {
			ds[i] = d * float32(int8(s))
		}
		dequantQ6KAVX2(&dst[b*qk], &blk[0], &ds)
	}
}
