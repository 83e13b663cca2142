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
func widenBF16AVX512(dst *float32, src *uint16, n int)

//go:noescape
func widenF16AVX512(dst *float32, src *uint16, n int)

//go:noescape
func widenBF16AVX2(dst *float32, src *uint16, n int)

//go:noescape
func widenF16AVX2(dst *float32, src *uint16, n int)

// asmWiden adapts an assembly row widening, which takes multiples of 16
// elements, to any length.
func asmWiden(f func(*float32, *uint16, int), widen func(uint16) float32) func(dst []float32, src []uint16) {
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
func asmTile[W any](f func(*[tileRows * tileCols]float32, *float32, int, int, *[tileCols]*W, int), widen func(W) float32) tiling[float32, W] {
	return tiling[float32, W]{
		tile: func(acc *[tileRows * tileCols]float32, x []float32, xStride, nx int, w *[tileCols]*W, k int) {
			f(acc, &x[0], xStride, nx, w, k)
		},
		block: lanes,
		mul:   func(x float32, w W) float32 { return x * widen(w) },
	}
}

var (
	avx512Kernels = kernelSet{
		path: PathAVX512,
		f32:  asmTile(tileF32AVX512, widenF32),
		bf16: asmTile(tileBF16AVX512, widenBF16),
		f16:  asmTile(tileF16AVX512, widenF16),

		widenBF16: asmWiden(widenBF16AVX512, widenBF16),
		widenF16:  asmWiden(widenF16AVX512, widenF16),
	}
	avx2Kernels = kernelSet{
		path: PathAVX2,
		f32:  asmTile(tileF32AVX2, widenF32),
		bf16: asmTile(tileBF16AVX2, widenBF16),
		f16:  asmTile(tileF16AVX2, widenF16),

		widenBF16: asmWiden(widenBF16AVX2, widenBF16),
		widenF16:  asmWiden(widenF16AVX2, widenF16),
	}
)

func simdKernels(p Path) (kernelSet, bool) {
	switch {
	case p == PathAVX512 && hasAVX512:
		return avx512Kernels, true
	case p == PathAVX2 && hasAVX2:
		return avx2Kernels, true
	}
	return kernelSet{}, false
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
