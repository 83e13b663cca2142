package kernel

// weightedSumsAVX2 is Attend's weighted sum on AVX2: out[h·d+i] =
// fma(w[h·n+j], values[j·stride+i], out[h·d+i]) for j ascending, h < g,
// i < d, with g = heads. d is a positive multiple of 8, n and heads
// positive.
//
//go:noescape
func weightedSumsAVX2(out, w *float32, n, heads, d int, values *float32, stride int)
