//go:build !amd64

package kernel

func weightedSumsAVX2(out, w *float32, n, heads, d int, values *float32, stride int) {
	panic("kernel: no AVX2 kernels on this architecture")
}
