package kernel

import "math"

// q8_0 is GGML's block_q8_0: an F16 scale d, then 32 int8 values q;
// v = q·d.
var q8_0 = quantFormat{
	format:     Q8_0,
	blockSize:  32,
	blockBytes: 2 + 32,
	dequantize: dequantizeQ8_0,
	quantize:   quantizeQ8_0,
	dotInt8:    dotQ8_0Int8,
}

func dequantizeQ8_0(dst []float32, b []byte) {
	d := halfAt(b)
	q := b[2:34]
	dst = dst[:32]
	for i := range dst {
		dst[i] = float32(int8(q[i])) * d
	}
}

// quantizeQ8_0 scales the block's largest magnitude to 127 and rounds
// half away from zero, as quantize_row_q8_0_ref does.
func quantizeQ8_0(dst []byte, x []float32) {
	_, amax := maxAbs(x[:32])
	d := amax / 127
	var id float32
	if d != 0 {
		id = 1 / d
	}
	putHalf(dst, d)
	for i, v := range x[:32] {
		// math.Round rounds half away from zero, as C's roundf.
		dst[2+i] = byte(int8(math.Round(float64(v * id))))
	}
}
