package kernel

//go:generate go run ./internal/tilegen -out tile_amd64.s

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

// The SIMD tile kernels of tile_amd64.s; see there for their contract.

//go:noescape
func tileF32AVX512(acc *[tileRows * tileCols]float32, x *float32, xstride, nx int, w *[tileCols]*float32, k int)

//go:noescape
func tileBF16AVX512(acc *[tileRows * tileCols]float32, x *float32, xstride, nx int, w *[tileCols]*uint16, k int)

//go:noescape
func tileF16AVX512(acc *[tileRows * tileCols]float32, x *float32, xstride, nx int, w *[tileCols]*uint16, k int)

//go:noescape
func tileF32AVX2(acc *[tileRows * tileCols]float32, x *float32, xstride, nx int, w *[tileCols]*float32, k int)

//go:noescape
func tileBF16AVX2(acc *[tileRows * tileCols]float32, x *float32, xstride, nx int, w *[tileCols]*uint16, k int)

//go:noescape
func tileF16AVX2(acc *[tileRows * tileCols]float32, x *float32, xstride, nx int, w *[tileCols]*uint16, k int)

//go:noescape
func tileF32AVX512NoPrefetch(acc *[tileRows * tileCols]float32, x *float32, xstride, nx int, w *[tileCols]*float32, k int)

//go:noescape
func tileBF16AVX512NoPrefetch(acc *[tileRows * tileCols]float32, x *float32, xstride, nx int, w *[tileCols]*uint16, k int)

//go:noescape
func tileF16AVX512NoPrefetch(acc *[tileRows * tileCols]float32, x *float32, xstride, nx int, w *[tileCols]*uint16, k int)

//go:noescape
func tileF32AVX2NoPrefetch(acc *[tileRows * tileCols]float32, x *float32, xstride, nx int, w *[tileCols]*float32, k int)

//go:noescape
func tileBF16AVX2NoPrefetch(acc *[tileRows * tileCols]float32, x *float32, xstride, nx int, w *[tileCols]*uint16, k int)

//go:noescape
func tileF16AVX2NoPrefetch(acc *[tileRows * tileCols]float32, x *float32, xstride, nx int, w *[tileCols]*uint16, k int)

//go:noescape
func tileBF16AVX512Widen(acc *[tileRows * tileCols]float32, x *float32, xstride, nx int, w *[tileCols]*uint16, k int, d0, d1, d2, d3 *float32)

// bf16WidenTile adapts tileBF16AVX512Widen to a widenTileFunc.
func bf16WidenTile(acc *[tileRows * tileCols]float32, x []float32, xStride, nx int, w *[tileCols]*uint16, k int, d *[tileCols]*float32) {
	tileBF16AVX512Widen(acc, &x[0], xStride, nx, w, k, d[0], d[1], d[2], d[3])
}

//go:noescape
func widenBF16AVX512(dst *float32, src *uint16, n int)

//go:noescape
func widenF16AVX512(dst *float32, src *uint16, n int)

//go:noescape
func widenBF16AVX2(dst *float32, src *uint16, n int)

//go:noescape
func widenF16AVX2(dst *float32, src *uint16, n int)

// asmWiden adapts an assembly row widening, which takes multiples of 16
// elements, to any length.
func asmWiden(f asmWidenFunc, widen func(uint16) float32) func(dst []float32, src []uint16) {
	return func(dst []float32, src []uint16) {
		n := len(src)
		dst = dst[:n]
		k := n &^ (lanes - 1)
		if k > 0 {
			f(&dst[0], &src[0], k)
		}
		for i := k; i < n; i++ {
			dst[i] = widen(src[i])
		}
	}
}

// asmTile adapts an assembly tile kernel over float32 inputs to a tiling.
func asmTile[W any](f asmTileFunc[W], widen func(W) float32) tiling[float32, W] {
	return tiling[float32, W]{
		tile: func(acc *[tileRows * tileCols]float32, x []float32, xStride, nx int, w *[tileCols]*W, k int) {
			f(acc, &x[0], xStride, nx, w, k)
		},
		block: lanes,
		mul:   func(x float32, w W) float32 { return x * widen(w) },
	}
}

// The SIMD kernel sets, indexed by whether their tiles prefetch the
// weights in software.
var (
	avx512Kernels = [2]kernelSet{
		withBF16Widen(simdSet(PathAVX512, tileF32AVX512NoPrefetch, tileBF16AVX512NoPrefetch, tileF16AVX512NoPrefetch, widenBF16AVX512, widenF16AVX512)),
		simdSet(PathAVX512, tileF32AVX512, tileBF16AVX512, tileF16AVX512, widenBF16AVX512, widenF16AVX512),
	}
	avx2Kernels = [2]kernelSet{
		simdSet(PathAVX2, tileF32AVX2NoPrefetch, tileBF16AVX2NoPrefetch, tileF16AVX2NoPrefetch, widenBF16AVX2, widenF16AVX2),
		simdSet(PathAVX2, tileF32AVX2, tileBF16AVX2, tileF16AVX2, widenBF16AVX2, widenF16AVX2),
	}
)

type (
	asmTileFunc[W any] func(*[tileRows * tileCols]float32, *float32, int, int, *[tileCols]*W, int)
	asmWidenFunc       func(*float32, *uint16, int)
)

// withBF16Widen gives set the BF16 tile that stores what it widens. The
// sets that prefetch in software keep the separate widening pass and its
// prefetch of the next tile, which is what they were measured with.
func withBF16Widen(set kernelSet) kernelSet {
	set.bf16Widen = bf16WidenTile
	return set
}

// simdSet makes a kernel set of assembly tiles and widenings.
func simdSet(p Path, f32 asmTileFunc[float32], bf16, f16 asmTileFunc[uint16], wBF16, wF16 asmWidenFunc) kernelSet {
	return kernelSet{
		path:      p,
		f32:       asmTile(f32, widenF32),
		bf16:      asmTile(bf16, widenBF16),
		f16:       asmTile(f16, widenF16),
		widenBF16: asmWiden(wBF16, widenBF16),
		widenF16:  asmWiden(wF16, widenF16),
	}
}

func simdKernels(p Path, prefetch bool) (kernelSet, bool) {
	i := 0
	if prefetch {
		i = 1
	}
	switch {
	case p == PathAVX512 && hasAVX512:
		return avx512Kernels[i], true
	case p == PathAVX2 && hasAVX2:
		return avx2Kernels[i], true
	}
	return kernelSet{}, false
}

// cpuVendor returns the CPUID vendor string, "AuthenticAMD" say.
func cpuVendor() string {
	b, d, c := cpuidVendor()
	var v [12]byte
	for i, r := range [3]uint32{b, d, c} {
		v[4*i], v[4*i+1], v[4*i+2], v[4*i+3] = byte(r), byte(r>>8), byte(r>>16), byte(r>>24)
	}
	return string(v[:])
}

//go:noescape
func cpuidVendor() (ebx, edx, ecx uint32)

// prefetchByDefault is whether the float tiles prefetch their weights in
// software on this CPU: a decode step streams 10-25 % faster with the
// prefetches on Intel Xeons and 20 % slower on AMD Zen 4, whose hardware
// prefetchers keep up alone (BENCHMARKS.md).
func prefetchByDefault() bool {
	v := cpuVendor()
	return v != "AuthenticAMD" && v != "HygonGenuine"
}

//go:noescape
func tileBF16DotAVX512(acc *[tileRows * tileCols]float32, x *uint16, xstride, nx int, w *[tileCols]*uint16, k int)

// hasBF16Dot is what the BF16 compute mode needs.
var hasBF16Dot = hasAVX512 && cpu.X86.HasAVX512BF16

// bf16DotTiling is the BF16 compute mode's tiling: blocks of 32 columns in
// the dot-product instruction, the rest as float32 products of the rounded
// values.
var bf16DotTiling = tiling[uint16, uint16]{
	tile: func(acc *[tileRows * tileCols]float32, x []uint16, xStride, nx int, w *[tileCols]*uint16, k int) {
		tileBF16DotAVX512(acc, &x[0], xStride, nx, w, k)
	},
	block: 2 * lanes,
	mul:   func(x, w uint16) float32 { return widenBF16(x) * widenBF16(w) },
}

//go:noescape
func prefetchT0(p *byte, n int)

// prefetchRows asks for the weights of rows [lo, hi) of data, cols each,
// to be fetched ahead of their use.
func prefetchRows(data []uint16, cols, lo, hi int) {
	if lo >= hi {
		return
	}
	if n := (hi - lo) * cols * 2 &^ 63; n > 0 {
		prefetchT0((*byte)(unsafe.Pointer(&data[lo*cols])), n)
	}
}
