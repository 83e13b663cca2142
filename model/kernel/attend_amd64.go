package kernel

// accumulate32AVX2 adds a block of Attend's weighted value rows into 32
// output columns on AVX2: acc[i] = fma(w[j], values[j·stride+i], acc[i])
// for j < n in ascending order, i < 32. n is positive.
//
//go:noescape
func accumulate32AVX2(acc, w, values *float32, stride, n int)

// expSubAVX2 replaces x[i] by exp(x[i]-mx) for i < n, n a positive
// multiple of 8, and returns their sum (see expSub).
//
//go:noescape
func expSubAVX2(x *float32, n int, mx float32) float32
