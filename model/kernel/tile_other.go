//go:build !amd64

package kernel

// simdKernels reports that no SIMD kernels exist off amd64.
func simdKernels(Path) (kernelSet, bool) { return kernelSet{}, false }
