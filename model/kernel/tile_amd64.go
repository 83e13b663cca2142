package kernel

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

// asmTile adapts an assembly tile kernel to tileFunc.
func asmTile[W any](f func(*[tileRows * tileCols]float32, *float32, int, int, *[tileCols]*W, int)) tileFunc[W] {
	return func(acc *[tileRows * tileCols]float32, x []float32, xStride, nx int, w *[tileCols]*W, k int) {
		f(acc, &x[0], xStride, nx, w, k)
	}
}

var (
	avx512Kernels = kernelSet{
		path: PathAVX512,
		f32:  asmTile(tileF32AVX512),
		bf16: asmTile(tileBF16AVX512),
		f16:  asmTile(tileF16AVX512),
	}
	avx2Kernels = kernelSet{
		path: PathAVX2,
		f32:  asmTile(tileF32AVX2),
		bf16: asmTile(tileBF16AVX2),
		f16:  asmTile(tileF16AVX2),
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
