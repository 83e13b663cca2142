package kernel

import "math"

// qk is the number of values in a K-quant super-block.
const qk = 256

// q4_K is GGML's block_q4_K: F16 super-scales d and dmin, 12 bytes packing
// eight 6-bit scales and eight 6-bit mins, then 128 bytes of 4-bit values.
// Each 64 values are two sub-blocks sharing 32 bytes: the low nibbles are
// the first sub-block, the high nibbles the second; v = d·sc·q − dmin·m.
var q4_K = quantFormat{
	format:     Q4_K,
	blockSize:  qk,
	blockBytes: 2 + 2 + 12 + qk/2,
	dequantize: dequantizeQ4_K,
	quantize:   quantizeQ4_K,
	dotInt8:    dotQ4KInt8,
}

// scaleMinK4 unpacks sub-block j's 6-bit scale and min from the 12 bytes
// of a Q4_K or Q5_K block: the first four sub-blocks' sit in the low six
// bits of bytes 0–3 and 4–7; the last four's low four bits sit in bytes
// 8–11 and their high two bits in the top bits of bytes 0–7.
func scaleMinK4(j int, s []byte) (sc, m uint8) {
	if j < 4 {
		return s[j] & 63, s[j+4] & 63
	}
	return s[j+4]&0xf | (s[j-4]>>6)<<4, s[j+4]>>4 | (s[j]>>6)<<4
}

func dequantizeQ4_K(dst []float32, b []byte) {
	d, dmin := halfAt(b), halfAt(b[2:])
	scales, qs := b[4:16], b[16:16+qk/2]
	dst = dst[:qk]
	for c := range 4 {
		sc1, m1 := scaleMinK4(2*c, scales)
		sc2, m2 := scaleMinK4(2*c+1, scales)
		d1, dm1 := d*float32(sc1), dmin*float32(m1)
		d2, dm2 := d*float32(sc2), dmin*float32(m2)
		q := qs[32*c : 32*c+32]
		y := dst[64*c : 64*c+64]
		for l, v := range q {
			y[l] = float32(d1*float32(v&0xf)) - dm1
			y[l+32] = float32(d2*float32(v>>4)) - dm2
		}
	}
}

// quantizeQ4_K follows quantize_row_q4_K_ref: each 32-value sub-block gets
// the scale and min of a weighted least-squares search, the eight are
// quantized to 6 bits against the largest, and the values are rounded
// again against the scales as stored.
func quantizeQ4_K(dst []byte, x []float32) {
	quantizeQkx(dst[:4], dst[4:16], x[:qk], 15, -1, 20, func(L *[qk]uint8) {
		qs := dst[16 : 16+qk/2]
		for c := range 4 {
			for l := range 32 {
				qs[32*c+l] = L[64*c+l] | L[64*c+32+l]<<4
			}
		}
	})
}

// quantizeQkx is the part of the Q4_K and Q5_K reference quantizers they
// share: it fills the super-scales (head: d, dmin) and the packed 6-bit
// scales and mins, and hands the values, 0 to nmax, to pack.
func quantizeQkx(head, scales []byte, x []float32, nmax int, rmin float32, nstep int, pack func(L *[qk]uint8)) {
	var (
		L                [qk]uint8
		weights          [32]float32
		sc, mins         [qk / 32]float32
		maxScale, maxMin float32
	)
	for j := range qk / 32 {
		xs := x[32*j : 32*j+32]
		var sumX2 float32
		for _, v := range xs {
			sumX2 += float32(v * v)
		}
		avX := float32(math.Sqrt(float64(sumX2 / 32)))
		for l, v := range xs {
			weights[l] = avX + abs32(v)
		}
		sc[j], mins[j] = qkx2(nmax, xs, &weights, (*[32]uint8)(L[32*j:]), rmin, 0.1, nstep)
		maxScale = max(maxScale, sc[j])
		maxMin = max(maxMin, mins[j])
	}
	var invScale, invMin float32
	if maxScale > 0 {
		invScale = 63 / maxScale
	}
	if maxMin > 0 {
		invMin = 63 / maxMin
	}
	clear(scales[:12])
	for j := range qk / 32 {
		ls := min(63, uint8(nearestInt(invScale*sc[j])))
		lm := min(63, uint8(nearestInt(invMin*mins[j])))
		if j < 4 {
			scales[j], scales[j+4] = ls, lm
		} else {
			scales[j+4] = ls&0xf | (lm&0xf)<<4
			scales[j-4] |= (ls >> 4) << 6
			scales[j] |= (lm >> 4) << 6
		}
	}
	putHalf(head, maxScale/63)
	putHalf(head[2:], maxMin/63)
	d, dmin := halfAt(head), halfAt(head[2:])
	for j := range qk / 32 {
		s, m := scaleMinK4(j, scales)
		dj := d * float32(s)
		if dj == 0 {
			continue
		}
		dm := dmin * float32(m)
		for i, v := range x[32*j : 32*j+32] {
			L[32*j+i] = uint8(max(0, min(nmax, nearestInt((v+dm)/dj))))
		}
	}
	pack(&L)
}

// qkx2 is GGML's make_qkx2_quants for 32 values: it fits v ≈ scale·l − min
// with l in [0, nmax], minimizing the weighted squared error over a grid
// of nstep+1 candidate scales around nmax/(max−min), and returns the scale
// and the min with the levels in L.
func qkx2(nmax int, x []float32, weights *[32]float32, L *[32]uint8, rmin, rdelta float32, nstep int) (scale, theMin float32) {
	lo, hi := x[0], x[0]
	sumW := weights[0]
	sumX := float32(sumW * x[0])
	for i := 1; i < 32; i++ {
		lo = min(lo, x[i])
		hi = max(hi, x[i])
		w := weights[i]
		sumW += w
		sumX += float32(w * x[i])
	}
	lo = min(lo, 0)
	if hi == lo {
		clear(L[:])
		return 0, -lo
	}
	fmax := float32(nmax)
	iscale := fmax / (hi - lo)
	scale = 1 / iscale
	var bestMad float32
	for i, v := range x[:32] {
		l := max(0, min(nmax, nearestInt(float32(iscale*(v-lo)))))
		L[i] = uint8(l)
		diff := float32(float32(scale*float32(l))+lo) - v
		bestMad += float32(weights[i] * float32(diff*diff))
	}
	var aux [32]uint8
	for is := 0; is <= nstep; is++ {
		iscale := float32(float32(rmin+float32(rdelta*float32(is)))+fmax) / (hi - lo)
		var sumL, sumL2, sumXL float32
		for i, v := range x[:32] {
			l := max(0, min(nmax, nearestInt(float32(iscale*(v-lo)))))
			aux[i] = uint8(l)
			w, fl := weights[i], float32(l)
			sumL += float32(w * fl)
			sumL2 += float32(float32(w*fl) * fl)
			sumXL += float32(float32(w*fl) * v)
		}
		D := float32(sumW*sumL2) - float32(sumL*sumL)
		if D <= 0 {
			continue
		}
		thisScale := (float32(sumW*sumXL) - float32(sumX*sumL)) / D
		thisMin := (float32(sumL2*sumX) - float32(sumL*sumXL)) / D
		if thisMin > 0 {
			thisMin = 0
			thisScale = sumXL / sumL2
		}
		var mad float32
		for i, v := range x[:32] {
			diff := float32(float32(thisScale*float32(aux[i]))+thisMin) - v
			mad += float32(weights[i] * float32(diff*diff))
		}
		if mad < bestMad {
			*L = aux
			bestMad, scale, lo = mad, thisScale, thisMin
		}
	}
	return scale, -lo
}
