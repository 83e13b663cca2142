//go:build !amd64

package kernel

func accumulate32AVX2(acc, w, values *float32, stride, n int) {
	panic("kernel: no AVX2 kernels on this architecture")
}
