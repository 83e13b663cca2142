package kernel

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

//go:noescape
func int8Q4KAVX2(lanes *[tileCols][16]float32, w *[tileCols]*byte, q *int8, d *float32, sum *int32, nb int)

//go:noescape
func int8Q5KAVX2(lanes *[tileCols][16]float32, w *[tileCols]*byte, q *int8, d *float32, sum *int32, nb int)

// int8Q4K and int8Q5K are the int8-mode products of four Q4_K or Q5_K
// rows: the assembly leaves each row's accumulators and mins.
func int8Q4K(out *[tileCols]float32, w *[tileCols]*byte, q *int8, d *float32, sum *int32, nb int) {
	var l [tileCols][16]float32
	int8Q4KAVX2(&l, w, q, d, sum, nb)
	kOut(out, &l)
}

func int8Q5K(out *[tileCols]float32, w *[tileCols]*byte, q *int8, d *float32, sum *int32, nb int) {
	var l [tileCols][16]float32
	int8Q5KAVX2(&l, w, q, d, sum, nb)
	kOut(out, &l)
}

func kOut(out *[tileCols]float32, l *[tileCols][16]float32) {
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
		return int8Q4K
	case Q5_K:
		return int8Q5K
	case Q6_K:
		return int8Q6K
	}
	return nil
}
