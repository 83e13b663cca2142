package kernel

import "testing"

// BenchmarkTile measures one 4x4 tile kernel on data in L1 (k = 1024), to
// see each kernel's arithmetic rate apart from memory and Go overhead.
func BenchmarkTile(b *testing.B) {
	const k = 1024
	xf := make([]float32, 4*k)
	xh := make([]uint16, 4*k)
	wf := make([]float32, 4*k)
	wh := make([]uint16, 4*k)
	for i := range xf {
		xf[i], wf[i] = float32(i%7)*0.1, float32(i%5)*0.1
		xh[i], wh[i] = 0x3f80, 0x3f00
	}
	var acc [16]float32
	var pf [4]*float32
	var ph [4]*uint16
	for j := range 4 {
		pf[j], ph[j] = &wf[j*k], &wh[j*k]
	}
	ks := kernels
	b.Run("f32", func(b *testing.B) {
		for b.Loop() {
			ks.f32.tile(&acc, xf, k, 4, &pf, k)
		}
		b.ReportMetric(float64(b.N)*2*16*k/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	})
	b.Run("bf16", func(b *testing.B) {
		for b.Loop() {
			ks.bf16.tile(&acc, xf, k, 4, &ph, k)
		}
		b.ReportMetric(float64(b.N)*2*16*k/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	})
	if hasBF16Dot {
		b.Run("bf16dot", func(b *testing.B) {
			for b.Loop() {
				bf16DotTiling.tile(&acc, xh, k, 4, &ph, k)
			}
			b.ReportMetric(float64(b.N)*2*16*k/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}
