//go:build !amd64

package kernel

// useSIMD is false where no SIMD kernels exist; the portable ones serve.
const useSIMD = false

func dotSIMD(a, b []float32) float32 { return dotGo(a, b) }
