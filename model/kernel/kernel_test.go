package kernel_test

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/moegrid/moegrid/model/kernel"
	"github.com/moegrid/moegrid/model/safetensors"
)

// randFloats returns n values uniform in [-1, 1).
func randFloats(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(2*rng.Float64() - 1)
	}
	return v
}

// bf16ToFloat64 widens bfloat16 bits: the high half of a float32.
func bf16ToFloat64(h uint16) float64 { return float64(math.Float32frombits(uint32(h) << 16)) }

// f16ToFloat64 decodes IEEE half-precision bits from the definition, as an
// oracle independent of the package's bit manipulation. Finite values only.
func f16ToFloat64(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	mant := float64(h & 0x3ff)
	if exp == 0 {
		return sign * mant * math.Pow(2, -24)
	}
	return sign * (1 + mant/1024) * math.Pow(2, float64(exp-15))
}

// testMatrix is a random weight matrix with the exact values it holds,
// widened to float64 by an oracle independent of Matrix.Row.
type testMatrix struct {
	m     kernel.Matrix
	exact []float64 // [Rows·Cols]
}

func newTestMatrix(t testing.TB, rng *rand.Rand, rows, cols int, format kernel.Format) testMatrix {
	t.Helper()
	src := randFloats(rng, rows*cols)
	exact := make([]float64, len(src))
	var data []byte
	switch format {
	case kernel.F32:
		for i, v := range src {
			data = binary.LittleEndian.AppendUint32(data, math.Float32bits(v))
			exact[i] = float64(v)
		}
	case kernel.BF16:
		for i, v := range src {
			h := safetensors.Float32ToBF16(v)
			data = binary.LittleEndian.AppendUint16(data, h)
			exact[i] = bf16ToFloat64(h)
		}
	case kernel.F16:
		for i, v := range src {
			h := safetensors.Float32ToF16(v)
			data = binary.LittleEndian.AppendUint16(data, h)
			exact[i] = f16ToFloat64(h)
		}
	default:
		t.Fatalf("unsupported format %v", format)
	}
	m, err := kernel.NewMatrix(format, rows, cols, data)
	if err != nil {
		t.Fatal(err)
	}
	return testMatrix{m: m, exact: exact}
}

var formats = []kernel.Format{kernel.F32, kernel.BF16, kernel.F16}

// paths lists the kernel paths this CPU runs, so every test that loops
// over it covers each of them.
func paths() []kernel.Path {
	var ps []kernel.Path
	for _, p := range []kernel.Path{kernel.PathAVX512, kernel.PathAVX2, kernel.PathPortable} {
		if p.Supported() {
			ps = append(ps, p)
		}
	}
	return ps
}

// usePath switches the kernels to p for the rest of the test.
func usePath(t testing.TB, p kernel.Path) {
	t.Helper()
	restore, err := kernel.UsePath(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(restore)
}

// TestMatMulMatchesFloat64 checks MatMul against a plain float64 product,
// to within the rounding error of a float32 accumulation. The shapes cover
// columns that are not a multiple of the unrolling, single rows, and work
// on both sides of the parallel threshold.
func TestMatMulMatchesFloat64(t *testing.T) {
	shapes := []struct{ rows, wRows, wCols int }{
		{1, 1, 1},
		{1, 3, 7},
		{2, 5, 8},
		{3, 17, 9},
		{1, 64, 257},
		{4, 33, 100},
		{5, 257, 301}, // above the parallel threshold
		{40, 128, 256},
		{1, 1000, 70},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, path := range paths() {
		for _, dtype := range formats {
			for _, s := range shapes {
				t.Run(fmt.Sprintf("%v/%v/%dx[%d,%d]", path, dtype, s.rows, s.wRows, s.wCols), func(t *testing.T) {
					usePath(t, path)
					w := newTestMatrix(t, rng, s.wRows, s.wCols, dtype)
					x := randFloats(rng, s.rows*s.wCols)
					out := make([]float32, s.rows*s.wRows)
					kernel.MatMul(out, x, s.rows, w.m)
					for ti := range s.rows {
						for r := range s.wRows {
							var want, abs float64
							for c := range s.wCols {
								p := float64(x[ti*s.wCols+c]) * w.exact[r*s.wCols+c]
								want += p
								abs += math.Abs(p)
							}
							got := float64(out[ti*s.wRows+r])
							if tol := 1e-5*abs + 1e-30; math.Abs(got-want) > tol {
								t.Fatalf("out[%d,%d] = %v, want %v (|Δ| %.3g > %.3g)", ti, r, got, want, math.Abs(got-want), tol)
							}
						}
					}
				})
			}
		}
	}
}

func TestMatMulZeroRows(t *testing.T) {
	w := newTestMatrix(t, rand.New(rand.NewPCG(3, 4)), 4, 4, kernel.F32)
	kernel.MatMul(nil, nil, 0, w.m) // must not touch out or x
}

// setGOMAXPROCS sets GOMAXPROCS for the rest of the test.
func setGOMAXPROCS(t *testing.T, n int) {
	prev := runtime.GOMAXPROCS(n)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
}

func bits(v []float32) []uint32 {
	b := make([]uint32, len(v))
	for i, f := range v {
		b[i] = math.Float32bits(f)
	}
	return b
}

// TestMatMulBatchInvariant checks the property the package documents: the
// bits of a row's result do not depend on the other rows of the batch, on
// its place in the batch, or on GOMAXPROCS.
func TestMatMulBatchInvariant(t *testing.T) {
	shapes := []struct{ wRows, wCols int }{
		{515, 263}, // one row alone is above the parallel threshold
		{128, 256}, // one row alone is below it, the batch above
		{7, 9},     // never parallel
	}
	const rows = 24
	for _, path := range paths() {
		for _, dtype := range formats {
			for _, s := range shapes {
				t.Run(fmt.Sprintf("%v/%v/[%d,%d]", path, dtype, s.wRows, s.wCols), func(t *testing.T) {
					usePath(t, path)
					rng := rand.New(rand.NewPCG(5, 6))
					w := newTestMatrix(t, rng, s.wRows, s.wCols, dtype)
					n, m := s.wCols, s.wRows
					x := randFloats(rng, rows*n)
					batched := make([]float32, rows*m)
					kernel.MatMul(batched, x, rows, w.m)
					want := bits(batched)

					// One row at a time.
					single := make([]float32, rows*m)
					for r := range rows {
						kernel.MatMul(single[r*m:(r+1)*m], x[r*n:(r+1)*n], 1, w.m)
					}
					if d := cmp.Diff(want, bits(single)); d != "" {
						t.Errorf("row by row differs from batched (-batched +single):\n%s", d)
					}

					// The rows shuffled among themselves, in a smaller batch.
					perm := rng.Perm(rows)[:rows/2+1]
					px := make([]float32, 0, len(perm)*n)
					for _, r := range perm {
						px = append(px, x[r*n:(r+1)*n]...)
					}
					pout := make([]float32, len(perm)*m)
					kernel.MatMul(pout, px, len(perm), w.m)
					for i, r := range perm {
						if d := cmp.Diff(want[r*m:(r+1)*m], bits(pout[i*m:(i+1)*m])); d != "" {
							t.Errorf("row %d at place %d of a shuffled batch differs:\n%s", r, i, d)
						}
					}

					for _, procs := range []int{1, 3, 7, 64} {
						setGOMAXPROCS(t, procs)
						got := make([]float32, rows*m)
						kernel.MatMul(got, x, rows, w.m)
						if d := cmp.Diff(want, bits(got)); d != "" {
							t.Errorf("GOMAXPROCS=%d differs from the default:\n%s", procs, d)
						}
					}
				})
			}
		}
	}
}

func TestMatrixRow(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, dtype := range formats {
		w := newTestMatrix(t, rng, 3, 11, dtype)
		row := make([]float32, 11)
		for r := range 3 {
			w.m.Row(row, r)
			for c, v := range row {
				if float64(v) != w.exact[r*11+c] {
					t.Errorf("%v: Row(%d)[%d] = %v, want %v", dtype, r, c, v, w.exact[r*11+c])
				}
			}
		}
		if got, want := w.m.Bytes(), int64(3*11*formatSize[dtype]); got != want {
			t.Errorf("%v: Bytes = %d, want %d", dtype, got, want)
		}
	}
}

var formatSize = map[kernel.Format]int{kernel.F32: 4, kernel.BF16: 2, kernel.F16: 2}

func TestNewMatrixErrors(t *testing.T) {
	for _, tc := range []struct {
		name       string
		format     kernel.Format
		rows, cols int
		bytes      int
		want       string
	}{
		{"zero rows", kernel.F32, 0, 2, 0, "shape"},
		{"negative cols", kernel.F32, 2, -1, 0, "shape"},
		{"short F32", kernel.F32, 2, 2, 12, "needs 16 bytes, got 12"},
		{"long BF16", kernel.BF16, 2, 2, 10, "needs 8 bytes, got 10"},
		{"overflow", kernel.F32, 1 << 40, 1 << 40, 0, "overflows"},
		{"I32", kernel.Format("I32"), 1, 1, 4, "unsupported format"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := kernel.NewMatrix(tc.format, tc.rows, tc.cols, make([]byte, tc.bytes))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewMatrix error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestDot(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	for n := range 40 {
		a, b := randFloats(rng, n), randFloats(rng, n+3) // b may be longer
		var want, abs float64
		for i := range n {
			want += float64(a[i]) * float64(b[i])
			abs += math.Abs(float64(a[i]) * float64(b[i]))
		}
		if got := float64(kernel.Dot(a, b)); math.Abs(got-want) > 1e-6*abs+1e-30 {
			t.Errorf("n=%d: Dot = %v, want %v", n, got, want)
		}
	}
}

func TestRMSNorm(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	const rows, n, eps = 3, 67, 1e-5
	x := randFloats(rng, rows*n)
	x[n] = 300 // a row with a large value
	for i := 2 * n; i < 3*n; i++ {
		x[i] *= 1e-4 // a row whose mean square is comparable to eps
	}
	weight := randFloats(rng, n)
	for i := range weight {
		weight[i] += 1
	}
	want := make([]float64, rows*n)
	for t := range rows {
		var ss float64
		for i := range n {
			ss += float64(x[t*n+i]) * float64(x[t*n+i])
		}
		inv := 1 / math.Sqrt(ss/n+eps)
		for i := range n {
			want[t*n+i] = float64(weight[i]) * float64(x[t*n+i]) * inv
		}
	}
	check := func(name string, got []float32) {
		t.Helper()
		for i, g := range got {
			if d := math.Abs(float64(g) - want[i]); d > 1e-6*math.Abs(want[i])+1e-12 {
				t.Errorf("%s: out[%d] = %v, want %v", name, i, g, want[i])
			}
		}
	}
	out := make([]float32, rows*n)
	kernel.RMSNorm(out, x, weight, eps)
	check("separate", out)
	kernel.RMSNorm(x, x, weight, eps) // in place
	check("in place", x)
	if d := cmp.Diff(bits(out), bits(x)); d != "" {
		t.Errorf("in place differs from separate output:\n%s", d)
	}
}

func softmax64(x []float32) []float64 {
	mx := math.Inf(-1)
	for _, v := range x {
		mx = math.Max(mx, float64(v))
	}
	p := make([]float64, len(x))
	var sum float64
	for i, v := range x {
		p[i] = math.Exp(float64(v) - mx)
		sum += p[i]
	}
	for i := range p {
		p[i] /= sum
	}
	return p
}

func TestSoftmax(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	for _, tc := range []struct {
		name string
		x    []float32
	}{
		{"one", []float32{3}},
		{"uniform", []float32{2, 2, 2, 2}},
		{"large", []float32{1000, 1001, 999, -1000}},
		{"negative", []float32{-1e4, -1e4 + 1}},
		{"random", randFloats(rng, 100)},
		{"with -Inf", []float32{0, float32(math.Inf(-1)), 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := softmax64(tc.x)
			got := slices.Clone(tc.x)
			kernel.Softmax(got)
			var sum float64
			for i, g := range got {
				sum += float64(g)
				if d := math.Abs(float64(g) - want[i]); d > 5e-7*want[i]+1e-30 || math.IsNaN(float64(g)) {
					t.Errorf("p[%d] = %v, want %v", i, g, want[i])
				}
			}
			if math.Abs(sum-1) > 1e-6 {
				t.Errorf("Σp = %v, want 1", sum)
			}
		})
	}
	kernel.Softmax(nil) // must not panic
}

func TestSiLUMul(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 16))
	a := randFloats(rng, 50)
	for i := range a {
		a[i] *= 10
	}
	a = append(a, 0, -100, 100, -1e4, 1e4)
	b := randFloats(rng, len(a))
	want := make([]float64, len(a))
	for i := range a {
		x := float64(a[i])
		want[i] = x / (1 + math.Exp(-x)) * float64(b[i])
	}
	out := make([]float32, len(a))
	kernel.SiLUMul(out, a, b)
	for i, g := range out {
		if d := math.Abs(float64(g) - want[i]); d > 1e-6*math.Abs(want[i])+1e-30 || math.IsNaN(float64(g)) {
			t.Errorf("silu(%v)·%v = %v, want %v", a[i], b[i], g, want[i])
		}
	}
	kernel.SiLUMul(a, a, b) // aliasing a
	if d := cmp.Diff(bits(out), bits(a)); d != "" {
		t.Errorf("out aliasing a differs:\n%s", d)
	}
}

func TestAddAndAddScaled(t *testing.T) {
	dst := []float32{1, 2, 3}
	kernel.Add(dst, []float32{10, 20, 30, 40})
	kernel.AddScaled(dst, 0.5, []float32{2, 4, 6, 8})
	if want := []float32{12, 24, 36}; !slices.Equal(dst, want) {
		t.Errorf("got %v, want %v", dst, want)
	}
}

// TestPathsAgree checks that the SIMD paths, with and without software
// prefetch, compute every element in the same order (bit for bit), and
// that the portable path is within float32 rounding of them, on shapes
// around the tile and lane sizes.
func TestPathsAgree(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for _, dtype := range formats {
		for _, s := range []struct{ rows, wRows, wCols int }{
			{1, 1, 16}, {1, 4, 17}, {2, 5, 31}, {3, 6, 32}, {4, 7, 33}, {5, 9, 48},
			{7, 13, 100}, {9, 4, 256}, {16, 33, 1024}, {33, 8, 130},
		} {
			w := newTestMatrix(t, rng, s.wRows, s.wCols, dtype)
			x := randFloats(rng, s.rows*s.wCols)
			name := fmt.Sprintf("%v/%dx[%d,%d]", dtype, s.rows, s.wRows, s.wCols)
			var ref []float32
			simd := map[string][]float32{}
			for _, p := range paths() {
				for _, prefetch := range []bool{false, true} {
					restore, err := kernel.UsePath(p)
					if err != nil {
						t.Fatal(err)
					}
					restorePrefetch := kernel.UsePrefetch(prefetch)
					out := make([]float32, s.rows*s.wRows)
					kernel.MatMul(out, x, s.rows, w.m)
					restorePrefetch()
					restore()
					if p == kernel.PathPortable {
						ref = out
						break
					}
					simd[fmt.Sprintf("%v prefetch=%v", p, prefetch)] = out
				}
			}
			// Every SIMD kernel gives the same bits, and all are within
			// float32 rounding of the portable path.
			var first string
			for k, got := range simd {
				if first == "" {
					first = k
				} else if d := cmp.Diff(bits(simd[first]), bits(got)); d != "" {
					t.Errorf("%s: %s and %s differ:\n%s", name, first, k, d)
				}
				for i := range got {
					if d := math.Abs(float64(got[i] - ref[i])); d > 1e-5*(1+math.Abs(float64(ref[i]))) {
						t.Errorf("%s: %s out[%d] = %v, portable %v", name, k, i, got[i], ref[i])
					}
				}
			}
		}
	}
}

// FuzzMatMulPaths compares every path with the portable one and the SIMD
// paths with each other on shapes and values the fuzzer picks.
func FuzzMatMulPaths(f *testing.F) {
	f.Add(uint8(1), uint8(4), uint8(16), uint64(1), uint8(0))
	f.Add(uint8(5), uint8(7), uint8(33), uint64(2), uint8(1))
	f.Add(uint8(3), uint8(1), uint8(200), uint64(3), uint8(2))
	f.Fuzz(func(t *testing.T, rows, wRows, wCols uint8, seed uint64, format uint8) {
		if rows == 0 || wRows == 0 || wCols == 0 {
			return
		}
		dtype := formats[int(format)%len(formats)]
		rng := rand.New(rand.NewPCG(seed, 1))
		w := newTestMatrix(t, rng, int(wRows), int(wCols), dtype)
		x := randFloats(rng, int(rows)*int(wCols))
		usePath(t, kernel.PathPortable)
		ref := make([]float32, int(rows)*int(wRows))
		kernel.MatMul(ref, x, int(rows), w.m)
		var first []uint32
		for _, p := range paths() {
			if p == kernel.PathPortable {
				continue
			}
			usePath(t, p)
			out := make([]float32, int(rows)*int(wRows))
			kernel.MatMul(out, x, int(rows), w.m)
			for i := range out {
				if d := math.Abs(float64(out[i] - ref[i])); d > 1e-5*(1+math.Abs(float64(ref[i]))) {
					t.Fatalf("%v out[%d] = %v, portable %v", p, i, out[i], ref[i])
				}
			}
			if first == nil {
				first = bits(out)
			} else if d := cmp.Diff(first, bits(out)); d != "" {
				t.Fatalf("%v differs from the first SIMD path:\n%s", p, d)
			}
		}
	})
}

// TestComputeBF16 checks the fast BF16 mode: a product equals the float64
// product of the stored weights and the activations rounded to bfloat16,
// to within float32 rounding, and stays batch-invariant.
func TestComputeBF16(t *testing.T) {
	if err := kernel.SetCompute(kernel.ComputeBF16); err != nil {
		t.Skipf("this CPU has no BF16 mode: %v", err)
	}
	t.Cleanup(func() { kernel.SetCompute(kernel.ComputeExact) })
	rng := rand.New(rand.NewPCG(13, 14))
	for _, s := range []struct{ rows, wRows, wCols int }{
		{1, 4, 32}, {1, 5, 33}, {3, 9, 64}, {4, 8, 100}, {7, 33, 1024}, {24, 17, 96},
	} {
		w := newTestMatrix(t, rng, s.wRows, s.wCols, kernel.BF16)
		x := randFloats(rng, s.rows*s.wCols)
		out := make([]float32, s.rows*s.wRows)
		kernel.MatMul(out, x, s.rows, w.m)
		for ti := range s.rows {
			for r := range s.wRows {
				var want, abs float64
				for c := range s.wCols {
					p := bf16ToFloat64(safetensors.Float32ToBF16(x[ti*s.wCols+c])) * w.exact[r*s.wCols+c]
					want += p
					abs += math.Abs(p)
				}
				if got := float64(out[ti*s.wRows+r]); math.Abs(got-want) > 1e-5*abs+1e-30 {
					t.Fatalf("%v: out[%d,%d] = %v, want %v", s, ti, r, got, want)
				}
			}
		}
		single := make([]float32, s.rows*s.wRows)
		for ti := range s.rows {
			kernel.MatMul(single[ti*s.wRows:(ti+1)*s.wRows], x[ti*s.wCols:(ti+1)*s.wCols], 1, w.m)
		}
		if d := cmp.Diff(bits(out), bits(single)); d != "" {
			t.Errorf("%v: row by row differs from batched:\n%s", s, d)
		}
	}
}
