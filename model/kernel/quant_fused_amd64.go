package kernel

//go:noescape
func mulQ8_0x1AVX512(acc *[tileRows * tileCols]float32, x *float32, w *[tileCols]*byte, nb int)

// fusedOne returns the fused one-input-row product of format f on path p
// (quant_fused_amd64.s), or nil where there is none.
func fusedOne(f Format, p Path) func(acc *[tileRows * tileCols]float32, x *float32, w *[tileCols]*byte, nb int) {
	if f == Q8_0 && p == PathAVX512 && hasAVX512 {
		return mulQ8_0x1AVX512
	}
	return nil
}
