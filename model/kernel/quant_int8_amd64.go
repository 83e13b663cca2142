package kernel

import "golang.org/x/sys/cpu"

// The AVX2 int8-mode products of quant_int8_amd64.s: VPMADDUBSW multiplies
// unsigned by signed bytes into int16 pairs, so a signed weight lends its
// sign to the activation and multiplies as its magnitude (at most
// 2·128·127 per pair, below the int16 saturation), and VPMADDWD widens
// the pairs to the eight int32 lanes, times the integer sub-block scales.
// Each format has Rows, a run of weight rows each times one activation
// row, and Row4, one weight row times four activation rows, and a VNNI
// twin of both for the AVX-512 path (AVX512_VNNI and VL): VPDPBUSD for
// Q8_0's bytes, VPDPWSSD for the K formats' scaled int16 pairs.

//go:noescape
func int8Q8_0Rows(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)

//go:noescape
func int8Q8_0Row4(out *[int8Rows]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds, ss int)

//go:noescape
func int8Q8_0RowsVNNI(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)

//go:noescape
func int8Q8_0Row4VNNI(out *[int8Rows]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds, ss int)

//go:noescape
func int8Q4KRows(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)

//go:noescape
func int8Q4KRow4(out *[int8Rows]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds, ss int)

//go:noescape
func int8Q4KRowsVNNI(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)

//go:noescape
func int8Q4KRow4VNNI(out *[int8Rows]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds, ss int)

//go:noescape
func int8Q5KRows(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)

//go:noescape
func int8Q5KRow4(out *[int8Rows]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds, ss int)

//go:noescape
func int8Q5KRowsVNNI(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)

//go:noescape
func int8Q5KRow4VNNI(out *[int8Rows]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds, ss int)

//go:noescape
func int8Q6KRows(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)

//go:noescape
func int8Q6KRow4(out *[int8Rows]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds, ss int)

//go:noescape
func int8Q6KRowsVNNI(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)

//go:noescape
func int8Q6KRow4VNNI(out *[int8Rows]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds, ss int)

// hasVNNI is what the VNNI kernels need besides the AVX-512 path.
var hasVNNI = cpu.X86.HasAVX512VNNI && cpu.X86.HasAVX512VL

// int8Kernel returns the int8-mode products of format f on path p, or
// none where there are none. The AVX-512 path takes the VNNI kernels
// where the CPU has VNNI, the AVX2 ones otherwise.
func int8Kernel(f Format, p Path) int8Kernels {
	if p == PathPortable || !hasAVX2 {
		return int8Kernels{}
	}
	vnni := p == PathAVX512 && hasAVX512 && hasVNNI
	switch {
	case f == Q8_0 && vnni:
		return int8Kernels{int8Q8_0RowsVNNI, int8Q8_0Row4VNNI}
	case f == Q8_0:
		return int8Kernels{int8Q8_0Rows, int8Q8_0Row4}
	case f == Q4_K && vnni:
		return int8Kernels{int8Q4KRowsVNNI, int8Q4KRow4VNNI}
	case f == Q4_K:
		return int8Kernels{int8Q4KRows, int8Q4KRow4}
	case f == Q5_K && vnni:
		return int8Kernels{int8Q5KRowsVNNI, int8Q5KRow4VNNI}
	case f == Q5_K:
		return int8Kernels{int8Q5KRows, int8Q5KRow4}
	case f == Q6_K && vnni:
		return int8Kernels{int8Q6KRowsVNNI, int8Q6KRow4VNNI}
	case f == Q6_K:
		return int8Kernels{int8Q6KRows, int8Q6KRow4}
	}
	return int8Kernels{}
}
