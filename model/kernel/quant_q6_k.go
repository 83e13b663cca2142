package kernel

// q6_K is GGML's block_q6_K: 128 bytes of low nibbles, 64 bytes of high
// bit pairs, sixteen int8 scales (one per 16 values), then an F16
// super-scale d; v = d·sc·(q−32). Each half of 128 values uses 64 low
// bytes and 32 high bytes: value l of its four 32-value quarters takes
// the low or high nibble of low byte l or l+32 and bit pair 0–3 of high
// byte l.
var q6_K = quantFormat{
	format:     Q6_K,
	blockSize:  qk,
	blockBytes: qk/2 + qk/4 + qk/16 + 2,
	dequantize: dequantizeQ6_K,
	quantize:   quantizeQ6_K,
	dotInt8:    dotQ6KInt8,
}

func dequantizeQ6_K(dst []float32, b []byte) {
	d := halfAt(b[qk/2+qk/4+qk/16:])
	dst = dst[:qk]
	for h := range 2 {
		ql := b[64*h : 64*h+64]
		qh := b[qk/2+32*h : qk/2+32*h+32]
		sc := b[qk/2+qk/4+8*h : qk/2+qk/4+8*h+8]
		y := dst[128*h : 128*h+128]
		for l := range 32 {
			is := l / 16
			q1 := int(ql[l]&0xf|(qh[l]&3)<<4) - 32
			q2 := int(ql[l+32]&0xf|(qh[l]>>2&3)<<4) - 32
			q3 := int(ql[l]>>4|(qh[l]>>4&3)<<4) - 32
			q4 := int(ql[l+32]>>4|(qh[l]>>6&3)<<4) - 32
			y[l] = float32(d*float32(int8(sc[is]))) * float32(q1)
			y[l+32] = float32(d*float32(int8(sc[is+2]))) * float32(q2)
			y[l+64] = float32(d*float32(int8(sc[is+4]))) * float32(q3)
			y[l+96] = float32(d*float32(int8(sc[is+6]))) * float32(q4)
		}
	}
}

// groupMaxEps is GGML's GROUP_MAX_EPS: a group whose largest magnitude is
// below it quantizes to zeros.
const groupMaxEps = 1e-15

// quantizeQ6_K follows quantize_row_q6_K_ref: each 16-value sub-block's
// scale comes from a search weighted by x², the sixteen scales are
// quantized to int8 against the largest, and the values are rounded
// again against the scales as stored.
func quantizeQ6_K(dst []byte, x []float32) {
	var (
		L                     [qk]int8
		scales                [qk / 16]float32
		maxScale, maxAbsScale float32
	)
	for ib := range qk / 16 {
		s := qx(32, x[16*ib:16*ib+16], (*[16]int8)(L[16*ib:]))
		scales[ib] = s
		if a := abs32(s); a > maxAbsScale {
			maxAbsScale, maxScale = a, s
		}
	}
	clear(dst[:qk/2+qk/4+qk/16+2])
	if maxAbsScale < groupMaxEps {
		return
	}
	sc := dst[qk/2+qk/4 : qk/2+qk/4+qk/16]
	iscale := -128 / maxScale
	putHalf(dst[qk/2+qk/4+qk/16:], 1/iscale)
	d := halfAt(dst[qk/2+qk/4+qk/16:])
	for ib := range qk / 16 {
		sc[ib] = byte(int8(min(127, nearestInt(iscale*scales[ib]))))
	}
	for j := range qk / 16 {
		dj := d * float32(int8(sc[j]))
		if dj == 0 {
			continue
		}
		for i, v := range x[16*j : 16*j+16] {
			L[16*j+i] = int8(max(-32, min(31, nearestInt(v/dj))) + 32)
		}
	}
	ql, qh := dst[:qk/2], dst[qk/2:qk/2+qk/4]
	for h := range 2 {
		Lh := L[128*h : 128*h+128]
		for l := range 32 {
			q1, q2, q3, q4 := uint8(Lh[l]), uint8(Lh[l+32]), uint8(Lh[l+64]), uint8(Lh[l+96])
			ql[64*h+l] = q1&0xf | (q3&0xf)<<4
			ql[64*h+l+32] = q2&0xf | (q4&0xf)<<4
			qh[32*h+l] = q1>>4 | (q2>>4)<<2 | (q3>>4)<<4 | (q4>>4)<<6
		}
	}
}

// qx is GGML's make_qx_quants for 16 values with rmse_type 1: it fits
// v ≈ scale·l with l in [−nmax, nmax−1], weighting each value by its
// square, over 19 candidate scales around −nmax/max, and returns the
// scale with the levels (offset by nmax) in L.
func qx(nmax int, x []float32, L *[16]int8) float32 {
	m, amax := maxAbs(x[:16])
	if amax < groupMaxEps {
		clear(L[:])
		return 0
	}
	fmax := float32(nmax)
	iscale := -fmax / m
	var sumLX, sumL2 float32
	for i, v := range x[:16] {
		l := max(-nmax, min(nmax-1, nearestInt(float32(iscale*v))))
		L[i] = int8(l + nmax)
		w, fl := float32(v*v), float32(l)
		sumLX += float32(float32(w*v) * fl)
		sumL2 += float32(float32(w*fl) * fl)
	}
	var scale float32
	if sumL2 != 0 {
		scale = sumLX / sumL2
	}
	best := scale * sumLX
	for is := -9; is <= 9; is++ {
		if is == 0 {
			continue
		}
		iscale = -(fmax + float32(0.1*float32(is))) / m
		sumLX, sumL2 = 0, 0
		for _, v := range x[:16] {
			l := max(-nmax, min(nmax-1, nearestInt(float32(iscale*v))))
			w, fl := float32(v*v), float32(l)
			sumLX += float32(float32(w*v) * fl)
			sumL2 += float32(float32(w*fl) * fl)
		}
		if sumL2 > 0 && float32(sumLX*sumLX) > float32(best*sumL2) {
			for i, v := range x[:16] {
				L[i] = int8(nmax + max(-nmax, min(nmax-1, nearestInt(float32(iscale*v)))))
			}
			scale = sumLX / sumL2
			best = scale * sumLX
		}
	}
	return scale
}
