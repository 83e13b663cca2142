package kernel

// q4_0 is GGML's block_q4_0: an F16 scale d, then 16 bytes whose low
// nibbles are values 0–15 and high nibbles values 16–31; v = (q−8)·d.
var q4_0 = quantFormat{
	format:     Q4_0,
	blockSize:  32,
	blockBytes: 2 + 16,
	dequantize: dequantizeQ4_0,
	quantize:   quantizeQ4_0,
	dotInt8:    dotQ4_0Int8,
}

func dequantizeQ4_0(dst []float32, b []byte) {
	d := halfAt(b)
	q := b[2:18]
	dst = dst[:32]
	for i, v := range q {
		dst[i] = float32(int(v&0xf)-8) * d
		dst[i+16] = float32(int(v>>4)-8) * d
	}
}

// quantizeQ4_0 maps the block's value of largest magnitude to −8, as
// quantize_row_q4_0_ref does: q = min(15, trunc(x/d + 8.5)), in float32
// with the product and the sum rounded separately (GGML's baseline x86
// build, which has no fused multiply-add).
func quantizeQ4_0(dst []byte, x []float32) {
	m, _ := maxAbs(x[:32])
	d := m / -8
	var id float32
	if d != 0 {
		id = 1 / d
	}
	putHalf(dst, d)
	for i := range 16 {
		lo := min(15, int8(float32(x[i]*id)+8.5))
		hi := min(15, int8(float32(x[i+16]*id)+8.5))
		dst[2+i] = byte(lo) | byte(hi)<<4
	}
}
