package kernel

import "golang.org/x/sys/cpu"

// The AVX2 int8-mode products of quant_int8_amd64.s: VPMADDUBSW multiplies
// unsigned by signed bytes into int16 pairs, so a signed weight lends its
// sign to the activation and multiplies as its magnitude (at most
// 2·128·127 per pair, below the int16 saturation), and VPMADDWD widens
// the pairs to the eight int32 lanes, times the integer sub-block scales.
// Each format has Rows, a run of weight rows each times one activation
// row, and Row4, one weight row times four activation rows.

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
func int8Q5KRows(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)

//go:noescape
func int8Q5KRow4(out *[int8Rows]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds, ss int)

//go:noescape
func int8Q6KRows(out *float32, w *byte, rows int, q *int8, d *float32, sum *int32, nb int)

//go:noescape
func int8Q6KRow4(out *[int8Rows]float32, w *byte, q *int8, d *float32, sum *int32, nb, qs, ds, ss int)

// hasVNNI is what the VNNI kernels need besides the AVX-512 path.
var hasVNNI = cpu.X86.HasAVX512VNNI && cpu.X86.HasAVX512VL

// int8Kernel returns the int8-mode products of format f on path p, or
// none where there are none. The AVX2 kernels serve the AVX-512 path but
// for Q8_0 where the CPU has VNNI.
func int8Kernel(f Format, p Path) int8Kernels {
	if p == PathPortable || !hasAVX2 {
		return int8Kernels{}
	}
	switch f {
	case Q8_0:
		if p == PathAVX512 && hasAVX512 && hasVNNI {
			return int8Kernels{int8Q8_0RowsVNNI, int8Q8_0Row4VNNI}
		}
		return int8Kernels{int8Q8_0Rows, int8Q8_0Row4}
	case Q4_K:
		return int8Kernels{int8Q4KRows, int8Q4KRow4}
	case Q5_K:
		return int8Kernels{int8Q5KRows, int8Q5KRow4}
	case Q6_K:
		return int8Kernels{int8Q6KRows, int8Q6KRow4}
	}
	return int8Kernels{}
}
