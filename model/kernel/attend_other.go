//go:build !amd64

package kernel

func accumulate32AVX2(acc, w, values *float32, stride, n int) {
	panic("kernel: no AVX2 kernels on this architecture")
}

func expSubAVX2(x *float32, n int, mx float32) float32 {
	panic("kernel: no AVX2 kernels on this architecture")
}

func scoresAVX2(scores, q *float32, heads, d int, keys *float32, stride, n int, scale float32) {
	panic("kernel: no AVX2 kernels on this architecture")
}
