//go:build !amd64

package kernel

// useSIMD is false where no SIMD kernels exist; the portable ones serve.
const useSIMD = false

func dotSIMD(a, b []float32) float32 { return dotGo(a, b) }

func dotBF16SIMD(a []float32, w []uint16) float32 { return dotBF16Go(a, w) }
