//go:build !amd64

package kernel

// simdRow reports that no SIMD dequantizers exist off amd64.
func simdRow(Format, Path) func(dst []float32, row []byte) { return nil }

// fusedOne reports that no fused products exist off amd64.
func fusedOne(Format, Path) func(acc *[tileRows * tileCols]float32, x *float32, w *[tileCols]*byte, nb int) {
	return nil
}

// fusedFour reports that no fused products exist off amd64.
func fusedFour(Format, Path) func(acc *[tileRows * tileCols]float32, x *[tileRows]*float32, w *[tileCols]*byte, nb int) {
	return nil
}

// int8Kernel reports that no int8-mode assembly exists off amd64.
func int8Kernel(Format, Path) int8Kernels { return int8Kernels{} }
