package kernel

import "golang.org/x/sys/cpu"

// useSIMD selects the AVX2+FMA dot products. All processes of a cluster
// should run on the same kind of CPU: the SIMD and the portable kernels
// round differently, and the cluster's bit-for-bit agreement with an
// in-process run holds for the same kernels.
var useSIMD = cpu.X86.HasAVX2 && cpu.X86.HasFMA

//go:noescape
func dotAVX2(a, b *float32, n int) float32

// simdBlock is the number of elements one SIMD loop iteration takes.
const simdBlock = 32

// dotSIMD is Dot on AVX2: the leading multiple of simdBlock elements in
// vector registers, the rest added after in order.
func dotSIMD(a, b []float32) float32 {
	n := len(a)
	b = b[:n]
	m := n &^ (simdBlock - 1)
	var s float32
	if m > 0 {
		s = dotAVX2(&a[0], &b[0], m)
	}
	for i := m; i < n; i++ {
		s += a[i] * b[i]
	}
	return s
}
