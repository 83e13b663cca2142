package kernel_test

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/moegrid/moegrid/model/kernel"
	"github.com/moegrid/moegrid/model/safetensors"
)

// BenchmarkQuantMulRows multiplies one and 16 input rows by a [1024, 4096]
// matrix in each format on one goroutine, the shape of a slice of
// Mixtral's expert projections; the throughput is of weight bytes.
func BenchmarkQuantMulRows(b *testing.B) {
	const rows, cols = 1024, 4096
	rng := rand.New(rand.NewPCG(1, 1))
	w := make([]float32, rows*cols)
	for i := range w {
		w[i] = float32(rng.NormFloat64())
	}
	for _, f := range append([]kernel.Format{kernel.F32, kernel.BF16}, quantFormats...) {
		data, err := kernel.Quantize(f, rows, cols, w)
		if err != nil {
			b.Fatal(err)
		}
		m, err := kernel.NewMatrix(f, rows, cols, data)
		if err != nil {
			b.Fatal(err)
		}
		for _, n := range []int{1, 4, 16} {
			x := make([]float32, n*cols)
			for i := range x {
				x[i] = float32(rng.NormFloat64())
			}
			out := make([]float32, n*rows)
			b.Run(string(f)+"/n="+itoa(n), func(b *testing.B) {
				b.SetBytes(int64(len(data)))
				for b.Loop() {
					m.MulRows(out, x, n, 0, rows)
				}
			})
		}
	}
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

// BenchmarkQuantRow dequantizes one 4096-value row of each format on the
// current path; the throughput is of weight bytes.
func BenchmarkQuantRow(b *testing.B) {
	const cols = 4096
	rng := rand.New(rand.NewPCG(1, 1))
	w := make([]float32, cols)
	for i := range w {
		w[i] = float32(rng.NormFloat64())
	}
	dst := make([]float32, cols)
	for _, f := range quantFormats {
		data, err := kernel.Quantize(f, 1, cols, w)
		if err != nil {
			b.Fatal(err)
		}
		m, err := kernel.NewMatrix(f, 1, cols, data)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(string(f), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				m.Row(dst, 0)
			}
		})
	}
}

// BenchmarkQuantize quantizes a [64, 4096] matrix of Gaussian weights to
// each format; the throughput is of float32 input bytes.
func BenchmarkQuantize(b *testing.B) {
	const rows, cols = 64, 4096
	rng := rand.New(rand.NewPCG(1, 1))
	w := make([]float32, rows*cols)
	for i := range w {
		w[i] = float32(rng.NormFloat64())
	}
	for _, f := range quantFormats {
		b.Run(string(f), func(b *testing.B) {
			b.SetBytes(int64(4 * len(w)))
			for b.Loop() {
				if _, err := kernel.Quantize(f, rows, cols, w); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkQuantCompute multiplies the small preset's expert shapes in the
// quantized formats by one and 16 input rows in the exact and the int8
// compute modes, each pair side by side so that -count interleaves them;
// the throughput is of weight bytes.
func BenchmarkQuantCompute(b *testing.B) {
	shapes := []struct {
		name       string
		rows, cols int
	}{
		{"W4096x1024", 4096, 1024},
		{"small/w1_w3_3584x1024", 3584, 1024},
		{"small/w2_1024x3584", 1024, 3584},
	}
	rng := rand.New(rand.NewPCG(1, 1))
	for _, f := range []kernel.Format{kernel.Q8_0, kernel.Q4_K, kernel.Q6_K, kernel.Q5_K, kernel.Q4_0} {
		for _, s := range shapes {
			m, data := quantizedMatrix(b, rng, f, s.rows, s.cols)
			for _, n := range []int{1, 16} {
				x := make([]float32, n*s.cols)
				for i := range x {
					x[i] = float32(rng.NormFloat64())
				}
				out := make([]float32, n*s.rows)
				for _, c := range []kernel.Compute{kernel.ComputeExact, kernel.ComputeInt8} {
					b.Run(string(f)+"-"+string(c)+"/"+s.name+"/rows="+itoa(n), func(b *testing.B) {
						if err := kernel.SetCompute(c); err != nil {
							b.Skip(err)
						}
						defer kernel.SetCompute(kernel.ComputeExact)
						b.SetBytes(int64(len(data)))
						for b.Loop() {
							kernel.MatMul(out, x, n, m)
						}
					})
				}
			}
		}
	}
}

// BenchmarkQuantStream multiplies one input row by a ring of expert-shaped
// matrices far larger than the caches, as a decode step does, so that the
// throughput (of weight bytes) is the kernel's streaming rate from memory:
// compare it with BenchmarkMemRead and with BenchmarkQuantCompute's rate
// on a matrix the caches hold.
func BenchmarkQuantStream(b *testing.B) {
	const ringBytes = 256 << 20
	rng := rand.New(rand.NewPCG(3, 3))
	for _, f := range []kernel.Format{kernel.F32, kernel.BF16, kernel.Q8_0, kernel.Q4_K, kernel.Q6_K} {
		var m kernel.Matrix
		var data []byte
		switch f {
		case kernel.F32, kernel.BF16:
			m, data = floatMatrix(b, rng, f, 3584, 1024)
		default:
			m, data = quantizedMatrix(b, rng, f, 3584, 1024)
		}
		ring := []kernel.Matrix{m}
		for len(ring)*len(data) < ringBytes {
			c, err := kernel.NewMatrix(f, 3584, 1024, append([]byte(nil), data...))
			if err != nil {
				b.Fatal(err)
			}
			ring = append(ring, c)
		}
		x := make([]float32, 1024)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		out := make([]float32, 3584)
		modes := []kernel.Compute{kernel.ComputeExact, kernel.ComputeInt8}
		if f == kernel.F32 || f == kernel.BF16 {
			modes = modes[:1]
		}
		for _, c := range modes {
			b.Run(string(f)+"-"+string(c), func(b *testing.B) {
				if err := kernel.SetCompute(c); err != nil {
					b.Skip(err)
				}
				defer kernel.SetCompute(kernel.ComputeExact)
				b.SetBytes(int64(len(ring) * len(data)))
				for b.Loop() {
					for _, w := range ring {
						kernel.MatMul(out, x, 1, w)
					}
				}
			})
		}
	}
}

// floatMatrix is a rows×cols F32 or BF16 matrix of random weights and its
// bytes.
func floatMatrix(t testing.TB, rng *rand.Rand, f kernel.Format, rows, cols int) (kernel.Matrix, []byte) {
	t.Helper()
	var data []byte
	for range rows * cols {
		v := float32(rng.NormFloat64())
		if f == kernel.BF16 {
			data = binary.LittleEndian.AppendUint16(data, safetensors.Float32ToBF16(v))
		} else {
			data = binary.LittleEndian.AppendUint32(data, math.Float32bits(v))
		}
	}
	m, err := kernel.NewMatrix(f, rows, cols, data)
	if err != nil {
		t.Fatal(err)
	}
	return m, data
}
