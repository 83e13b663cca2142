package kernel

import "unsafe"

//go:noescape
func mulQ8_0x1AVX512(acc *[tileRows * tileCols]float32, x *float32, w *[tileCols]*byte, nb int)

//go:noescape
func mulQ4Kx1AVX512(lanes *[tileCols][lanes]float32, x *float32, blocks *[tileCols]*byte, scales *[tileCols][16]float32)

// mulQ4Kx1On512 is the fused one-row product of four Q4_K rows on
// AVX-512, a call per super-block that unpacks the scales too.
func mulQ4Kx1On512(acc *[tileRows * tileCols]float32, x *float32, w *[tileCols]*byte, nb int) {
	var (
		l      [tileCols][lanes]float32
		blocks [tileCols]*byte
		scales [tileCols][16]float32
		rows   [tileCols][]byte
	)
	for j := range tileCols {
		rows[j] = unsafe.Slice(w[j], nb*144)
	}
	xs := unsafe.Slice(x, nb*qk)
	for b := range nb {
		for j := range tileCols {
			blocks[j] = &rows[j][b*144]
		}
		mulQ4Kx1AVX512(&l, &xs[b*qk], &blocks, &scales)
	}
	for j := range tileCols {
		acc[j] = reduceLanes(&l[j])
	}
}

//go:noescape
func mulQ4Kx1AVX2(lanes *[tileCols][lanes]float32, x *float32, q *[tileCols]*byte, dsc, dmn *[tileCols][8]float32)

// mulQ4Kx1 is the fused one-row product of four Q4_K rows: per
// super-block, the sub-block scales in Go and the values in assembly
// (asm: mulQ4Kx1AVX2), whose 16-lane accumulators carry
// over from one super-block to the next; reduceLanes then adds the lanes
// in the tile kernels' tree.
func mulQ4Kx1(asm func(lanes *[tileCols][lanes]float32, x *float32, q *[tileCols]*byte, dsc, dmn *[tileCols][8]float32), acc *[tileRows * tileCols]float32, x *float32, w *[tileCols]*byte, nb int) {
	var (
		l        [tileCols][lanes]float32
		q        [tileCols]*byte
		dsc, dmn [tileCols][8]float32
		rows     [tileCols][]byte
	)
	for j := range tileCols {
		rows[j] = unsafe.Slice(w[j], nb*144)
	}
	xs := unsafe.Slice(x, nb*qk)
	for b := range nb {
		for j := range tileCols {
			blk := rows[j][b*144 : (b+1)*144]
			kScales(blk, &dsc[j], &dmn[j])
			q[j] = &blk[16]
		}
		asm(&l, &xs[b*qk], &q, &dsc, &dmn)
	}
	for j := range tileCols {
		acc[j] = reduceLanes(&l[j])
	}
}

//go:noescape
func mulQ4_0x1AVX512(acc *[tileRows * tileCols]float32, x *float32, w *[tileCols]*byte, nb int)

//go:noescape
func mulQ5Kx1AVX512(lanes *[tileCols][lanes]float32, x *float32, blocks *[tileCols]*byte, scales *[tileCols][16]float32)

// mulQ5Kx1 is mulQ4Kx1On512 for Q5_K.
func mulQ5Kx1(acc *[tileRows * tileCols]float32, x *float32, w *[tileCols]*byte, nb int) {
	var (
		l      [tileCols][lanes]float32
		blocks [tileCols]*byte
		scales [tileCols][16]float32
		rows   [tileCols][]byte
	)
	for j := range tileCols {
		rows[j] = unsafe.Slice(w[j], nb*176)
	}
	xs := unsafe.Slice(x, nb*qk)
	for b := range nb {
		for j := range tileCols {
			blocks[j] = &rows[j][b*176]
		}
		mulQ5Kx1AVX512(&l, &xs[b*qk], &blocks, &scales)
	}
	for j := range tileCols {
		acc[j] = reduceLanes(&l[j])
	}
}

//go:noescape
func mulQ6Kx1AVX512(lanes *[tileCols][lanes]float32, x *float32, q *[tileCols]*byte, ds *[tileCols][16]float32)

//go:noescape
func mulQ6Kx1AVX2(lanes *[tileCols][lanes]float32, x *float32, q *[tileCols]*byte, ds *[tileCols][16]float32)

// mulQ6Kx1On512 is mulQ4Kx1On512 for Q6_K.
func mulQ6Kx1On512(acc *[tileRows * tileCols]float32, x *float32, w *[tileCols]*byte, nb int) {
	var (
		l    [tileCols][lanes]float32
		q    [tileCols]*byte
		ds   [tileCols][16]float32
		rows [tileCols][]byte
	)
	for j := range tileCols {
		rows[j] = unsafe.Slice(w[j], nb*210)
	}
	xs := unsafe.Slice(x, nb*qk)
	for b := range nb {
		for j := range tileCols {
			q[j] = &rows[j][b*210]
		}
		mulQ6Kx1AVX512(&l, &xs[b*qk], &q, &ds)
	}
	for j := range tileCols {
		acc[j] = reduceLanes(&l[j])
	}
}

// mulQ6Kx1 is mulQ4Kx1 for Q6_K (asm: mulQ6Kx1AVX2).
func mulQ6Kx1(asm func(lanes *[tileCols][lanes]float32, x *float32, q *[tileCols]*byte, ds *[tileCols][16]float32), acc *[tileRows * tileCols]float32, x *float32, w *[tileCols]*byte, nb int) {
	var (
		l    [tileCols][lanes]float32
		q    [tileCols]*byte
		ds   [tileCols][16]float32
		rows [tileCols][]byte
	)
	for j := range tileCols {
		rows[j] = unsafe.Slice(w[j], nb*210)
	}
	xs := unsafe.Slice(x, nb*qk)
	for b := range nb {
		for j := range tileCols {
			blk := rows[j][b*210 : (b+1)*210]
			d := halfAt(blk[208:])
			for i, s := range (*[16]byte)(blk[192:208]) {
				ds[j][i] = d * float32(int8(s))
			}
			q[j] = &blk[0]
		}
		asm(&l, &xs[b*qk], &q, &ds)
	}
	for j := range tileCols {
		acc[j] = reduceLanes(&l[j])
	}
}

//go:noescape
func mulQ8_0x4AVX512(acc *[tileRows * tileCols]float32, x *[tileRows]*float32, w *[tileCols]*byte, nb int)

//go:noescape
func mulQ4Kx4AVX512(lanes *[tileRows * tileCols][lanes]float32, x *[tileRows]*float32, q *[tileCols]*byte, dsc, dmn *[tileCols][8]float32)

// mulQ4Kx4 is mulQ4Kx1 for four input rows.
func mulQ4Kx4(acc *[tileRows * tileCols]float32, x *[tileRows]*float32, w *[tileCols]*byte, nb int) {
	var (
		l        [tileRows * tileCols][lanes]float32
		q        [tileCols]*byte
		xb       [tileRows]*float32
		dsc, dmn [tileCols][8]float32
		rows     [tileCols][]byte
		xs       [tileRows][]float32
	)
	for j := range tileCols {
		rows[j] = unsafe.Slice(w[j], nb*144)
	}
	for i := range tileRows {
		xs[i] = unsafe.Slice(x[i], nb*qk)
	}
	for b := range nb {
		for j := range tileCols {
			blk := rows[j][b*144 : (b+1)*144]
			kScales(blk, &dsc[j], &dmn[j])
			q[j] = &blk[16]
		}
		for i := range tileRows {
			xb[i] = &xs[i][b*qk]
		}
		mulQ4Kx4AVX512(&l, &xb, &q, &dsc, &dmn)
	}
	for k := range acc {
		acc[k] = reduceLanes(&l[k])
	}
}

// fusedFour returns the fused product of up to four input rows by four
// weight rows of format f on path p, or nil where there is none.
func fusedFour(f Format, p Path) func(acc *[tileRows * tileCols]float32, x *[tileRows]*float32, w *[tileCols]*byte, nb int) {
	if p != PathAVX512 || !hasAVX512 {
		return nil
	}
	switch f {
	case Q8_0:
		return mulQ8_0x4AVX512
	case Q4_K:
		return mulQ4Kx4
	}
	return nil
}

//go:noescape
func mulQ8_0x1AVX2(lanes *[tileCols][lanes]float32, x *float32, w *[tileCols]*byte, nb int)

// mulQ8_0x1OnAVX2 reduces the AVX2 kernel's lanes in the tile kernels'
// tree.
func mulQ8_0x1OnAVX2(acc *[tileRows * tileCols]float32, x *float32, w *[tileCols]*byte, nb int) {
	var l [tileCols][lanes]float32
	mulQ8_0x1AVX2(&l, x, w, nb)
	for j := range tileCols {
		acc[j] = reduceLanes(&l[j])
	}
}

// fusedOne returns the fused one-input-row product of format f on path p
// (quant_fused_amd64.s, quant_fused_avx2_amd64.s), or nil where there is
// none.
func fusedOne(f Format, p Path) func(acc *[tileRows * tileCols]float32, x *float32, w *[tileCols]*byte, nb int) {
	if p == PathAVX2 && hasAVX2 {
		switch f {
		case Q8_0:
			return mulQ8_0x1OnAVX2
		case Q4_K:
			return func(acc *[tileRows * tileCols]float32, x *float32, w *[tileCols]*byte, nb int) {
				mulQ4Kx1(mulQ4Kx1AVX2, acc, x, w, nb)
			}
		case Q6_K:
			return func(acc *[tileRows * tileCols]float32, x *float32, w *[tileCols]*byte, nb int) {
				mulQ6Kx1(mulQ6Kx1AVX2, acc, x, w, nb)
			}
		}
		return nil
	}
	if p != PathAVX512 || !hasAVX512 {
		return nil
	}
	switch f {
	case Q8_0:
		return mulQ8_0x1AVX512
	case Q4_0:
		return mulQ4_0x1AVX512
	case Q4_K:
		return mulQ4Kx1On512
	case Q5_K:
		return mulQ5Kx1
	case Q6_K:
		return mulQ6Kx1On512
	}
	return nil
}
