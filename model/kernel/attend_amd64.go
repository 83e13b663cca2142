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

// scoresAVX2 writes the scaled scores of Attend: scores[h·n+j] =
// Dot(q_h, key_j)·scale for h < heads, j < n, d a positive multiple of 32 and
// n positive, with the bits of dotAVX2.
//
//go:noescape
func scoresAVX2(scores, q *float32, heads, d int, keys *float32, stride, n int, scale float32)
