package kernel

// q5_K is GGML's block_q5_K: Q4_K's super-scales and packed scales, then
// 32 bytes of high bits and 128 bytes of low nibbles. Value l of the c-th
// 64 (c < 4) takes its fifth bit from bit 2c (first sub-block) or 2c+1
// (second) of high-bit byte l mod 32.
var q5_K = quantFormat{
	format:     Q5_K,
	blockSize:  qk,
	blockBytes: 2 + 2 + 12 + qk/8 + qk/2,
	dequantize: dequantizeQ5_K,
	quantize:   quantizeQ5_K,
	dotInt8:    dotQ5KInt8,
}

func dequantizeQ5_K(dst []float32, b []byte) {
	d, dmin := halfAt(b), halfAt(b[2:])
	scales, qh, qs := b[4:16], b[16:16+qk/8], b[16+qk/8:16+qk/8+qk/2]
	dst = dst[:qk]
	for c := range 4 {
		sc1, m1 := scaleMinK4(2*c, scales)
		sc2, m2 := scaleMinK4(2*c+1, scales)
		d1, dm1 := d*float32(sc1), dmin*float32(m1)
		d2, dm2 := d*float32(sc2), dmin*float32(m2)
		q := qs[32*c : 32*c+32]
		y := dst[64*c : 64*c+64]
		for l, v := range q {
			// The fifth bits, without branches: they are random.
			q1 := v&0xf | (qh[l]>>(2*c)&1)<<4
			q2 := v>>4 | (qh[l]>>(2*c+1)&1)<<4
			y[l] = float32(d1*float32(q1)) - dm1
			y[l+32] = float32(d2*float32(q2)) - dm2
		}
	}
}

// quantizeQ5_K follows quantize_row_q5_K_ref, Q4_K's search over 0–31.
func quantizeQ5_K(dst []byte, x []float32) {
	quantizeQkx(dst[:4], dst[4:16], x[:qk], 31, -0.5, 15, func(L *[qk]uint8) {
		qh, qs := dst[16:16+qk/8], dst[16+qk/8:16+qk/8+qk/2]
		clear(qh)
		for c := range 4 {
			m1, m2 := byte(1)<<(2*c), byte(2)<<(2*c)
			for j := range 32 {
				l1, l2 := L[64*c+j], L[64*c+32+j]
				if l1 > 15 {
					l1 -= 16
					qh[j] |= m1
				}
				if l2 > 15 {
					l2 -= 16
					qh[j] |= m2
				}
				qs[32*c+j] = l1 | l2<<4
			}
		}
	})
}
