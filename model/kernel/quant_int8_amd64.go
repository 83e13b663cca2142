package kernel

import "unsafe"

// The AVX2 int8-mode products of quant_int8_amd64.s: VPMADDUBSW multiplies
// unsigned by signed bytes into int16 pairs, so a signed weight lends its
// sign to the activation and multiplies as its magnitude (at most
// 2·128·127 per pair, below the int16 saturation), and VPMADDWD widens
// the pairs to the eight int32 lanes, times the integer sub-block scales.

//go:noescape
func int8Q8_0AVX2(lanes *[tileCols][8]float32, w *[tileCols]*byte, q *int8, d *float32, nb int)

// int8Q8_0 is the int8-mode product of four Q8_0 rows.
func int8Q8_0(out *[tileCols]float32, w *[tileCols]*byte, q *int8, d *float32, _ *int32, nb int) {
	var l [tileCols][8]float32
	int8Q8_0AVX2(&l, w, q, d, nb)
	for j := range tileCols {
		out[j] = reduce8(&l[j])
	}
}

// int8KScales is a Q4_K or Q5_K super-block's sub-block scales, super-
// scales and mins, unpacked for the assembly (56 bytes, its offsets fixed).
type int8KScales struct {
	sc      [8]int16
	d, dmin float32
	m       [8]int32
}

// int8KChunk is how many super-blocks' scales int8Q4K unpacks at a time.
const int8KChunk = 16

//go:noescape
func int8Q4KAVX2(lanes *[tileCols][16]float32, w *[tileCols]*byte, ks *[int8KChunk][tileCols]int8KScales, q *int8, d *float32, sum *int32, nb int)

//go:noescape
func int8Q5KAVX2(lanes *[tileCols][16]float32, w *[tileCols]*byte, ks *[int8KChunk][tileCols]int8KScales, q *int8, d *float32, sum *int32, nb int)

// int8K returns the int8-mode product of four Q4_K or Q5_K rows, of
// blockBytes per super-block: the scales unpacked in Go for up to
// int8KChunk super-blocks at a time, the values in assembly (asm).
func int8K(blockBytes int, asm func(lanes *[tileCols][16]float32, w *[tileCols]*byte, ks *[int8KChunk][tileCols]int8KScales, q *int8, d *float32, sum *int32, nb int)) int8Four {
	return func(out *[tileCols]float32, w *[tileCols]*byte, q *int8, d *float32, sum *int32, nb int) {
		int8KRows(out, w, q, d, sum, nb, blockBytes, asm)
	}
}

func int8KRows(out *[tileCols]float32, w *[tileCols]*byte, q *int8, d *float32, sum *int32, nb, blockBytes int, asm func(lanes *[tileCols][16]float32, w *[tileCols]*byte, ks *[int8KChunk][tileCols]int8KScales, q *int8, d *float32, sum *int32, nb int)) {
	var (
		l    [tileCols][16]float32
		ks   [int8KChunk][tileCols]int8KScales
		wc   [tileCols]*byte
		rows [tileCols][]byte
	)
	for j := range tileCols {
		rows[j] = unsafe.Slice(w[j], nb*blockBytes)
	}
	qs, ds, ss := unsafe.Slice(q, nb*qk), unsafe.Slice(d, nb*8), unsafe.Slice(sum, nb*8)
	for b0 := 0; b0 < nb; b0 += int8KChunk {
		n := min(int8KChunk, nb-b0)
		for b := range n {
			for j := range tileCols {
				blk := rows[j][(b0+b)*blockBytes : (b0+b+1)*blockBytes]
				k := &ks[b][j]
				k.d, k.dmin = halfAt(blk), halfAt(blk[2:])
				for i := range 8 {
					sc, m := scaleMinK4(i, blk[4:16])
					k.sc[i], k.m[i] = int16(sc), int32(m)
				}
			}
		}
		for j := range tileCols {
			wc[j] = &rows[j][b0*blockBytes]
		}
		asm(&l, &wc, &ks, &qs[b0*qk], &ds[b0*8], &ss[b0*8], n)
	}
	for j := range tileCols {
		out[j] = reduce8((*[8]float32)(l[j][:8])) - reduce8((*[8]float32)(l[j][8:]))
	}
}

//go:noescape
func int8Q6KAVX2(lanes *[tileCols][8]float32, w *[tileCols]*byte, q *int8, d *float32, nb int)

// int8Q6K is the int8-mode product of four Q6_K rows.
func int8Q6K(out *[tileCols]float32, w *[tileCols]*byte, q *int8, d *float32, _ *int32, nb int) {
	var l [tileCols][8]float32
	int8Q6KAVX2(&l, w, q, d, nb)
	for j := range tileCols {
		out[j] = reduce8(&l[j])
	}
}

// int8Kernel returns the int8-mode product of four rows of format f, or
// nil where there is none. The AVX2 kernels serve the AVX-512 path too.
func int8Kernel(f Format) int8Four {
	if !hasAVX2 {
		return nil
	}
	switch f {
	case Q8_0:
		return int8Q8_0
	case Q4_K:
		return int8K(144, int8Q4KAVX2)
	case Q5_K:
		return int8K(176, int8Q5KAVX2)
	case Q6_K:
		return int8Q6K
	}
	return nil
}
