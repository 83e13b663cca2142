//go:build !amd64

package kernel

// simdKernels reports that no SIMD kernels exist off amd64.
func simdKernels(Path, bool) (kernelSet, bool) { return kernelSet{}, false }

// prefetchByDefault is false where the kernels have no assembly.
func prefetchByDefault() bool { return false }

// hasBF16Dot is false off amd64: the BF16 compute mode needs AVX-512.
const hasBF16Dot = false

// bf16DotTiling is never used off amd64 (SetCompute refuses the mode).
var bf16DotTiling tiling[uint16, uint16]

// prefetchRows does nothing where the kernels have no assembly.
func prefetchRows([]uint16, int, int, int) {}
