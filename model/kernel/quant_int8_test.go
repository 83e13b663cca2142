package kernel_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/moegrid/moegrid/model/kernel"
)

// useInt8 switches to the int8 compute mode for the rest of the test, or
// skips it where this CPU has none.
func useInt8(t testing.TB) {
	t.Helper()
	if err := kernel.SetCompute(kernel.ComputeInt8); err != nil {
		t.Skipf("no int8 compute mode on this CPU: %v", err)
	}
	t.Cleanup(func() { kernel.SetCompute(kernel.ComputeExact) })
}

// quantizedMatrix quantizes random normal weights to f; it returns the
// matrix and its bytes.
func quantizedMatrix(t testing.TB, rng *rand.Rand, f kernel.Format, rows, cols int) (kernel.Matrix, []byte) {
	t.Helper()
	src := make([]float32, rows*cols)
	for i := range src {
		src[i] = float32(rng.NormFloat64())
	}
	data, err := kernel.Quantize(f, rows, cols, src)
	if err != nil {
		t.Fatal(err)
	}
	m, err := kernel.NewMatrix(f, rows, cols, data)
	if err != nil {
		t.Fatal(err)
	}
	return m, data
}

// int8Inputs returns n rows of random activations, some blocks of them
// zero or of tiny or large magnitude, as the scale handling must cope.
func int8Inputs(rng *rand.Rand, n, cols int) []float32 {
	x := make([]float32, n*cols)
	for b := 0; b < len(x); b += 32 {
		scale := [...]float32{1, 1, 1, 0, 1e-30, 1e4, 3e-3}[rng.IntN(7)]
		for i := b; i < b+32; i++ {
			x[i] = scale * float32(rng.NormFloat64())
		}
	}
	return x
}

// TestInt8PathsAgree checks that the assembly products of the int8 mode
// give the portable code's bits, on random blocks (every bit pattern, with
// finite scales) and quantized weights, for odd shapes and batch sizes.
func TestInt8PathsAgree(t *testing.T) {
	useInt8(t)
	rng := rand.New(rand.NewPCG(21, 22))
	for _, f := range quantFormats {
		for _, s := range []struct{ n, rows, blocks int }{{1, 1, 1}, {1, 5, 3}, {2, 13, 2}, {3, 4, 1}, {4, 3, 2}, {5, 9, 4}, {9, 6, 3}, {1, 64, 16}} {
			cols := s.blocks * max(256, f.BlockSize())
			for _, random := range []bool{false, true} {
				m, _ := quantizedMatrix(t, rng, f, s.rows, cols)
				if random {
					var err error
					if m, err = kernel.NewMatrix(f, s.rows, cols, randomBlocks(rng, f, s.rows*cols/f.BlockSize())); err != nil {
						t.Fatal(err)
					}
				}
				x := int8Inputs(rng, s.n, cols)
				want := int8Product(t, kernel.PathPortable, m, x, s.n)
				for _, p := range quantPaths() {
					if d := firstBitDiff(int8Product(t, p, m, x, s.n), want); d != "" {
						t.Errorf("%s %+v random=%v on %s: %s", f, s, random, p, d)
					}
				}
			}
		}
	}
}

func int8Product(t testing.TB, p kernel.Path, m kernel.Matrix, x []float32, n int) []float32 {
	t.Helper()
	restore, err := kernel.UsePath(p)
	if err != nil {
		t.Fatal(err)
	}
	defer restore()
	out := make([]float32, n*m.Rows())
	kernel.MatMul(out, x, n, m)
	return out
}

// TestInt8Error checks the int8 mode against the float64 product of the
// dequantized weights and the exact activations: rounding an activation
// to its block's step dx = max|x|/127 moves it by at most dx/2, so a
// result may differ by Σ|w|·dx/2 plus float32 rounding, and no more. The
// K formats' activation blocks are their 256-value super-blocks.
func TestInt8Error(t *testing.T) {
	useInt8(t)
	rng := rand.New(rand.NewPCG(23, 24))
	for _, f := range quantFormats {
		const n, rows = 3, 17
		cols := 4 * max(256, f.BlockSize())
		m, data := quantizedMatrix(t, rng, f, rows, cols)
		w := dequantizeAll(t, f, rows, cols, data)
		x := int8Inputs(rng, n, cols)
		out := make([]float32, n*rows)
		kernel.MatMul(out, x, n, m)
		var worst float64
		for ti := range n {
			xt := x[ti*cols : (ti+1)*cols]
			for r := range rows {
				var want, abs, bound float64
				block := min(f.BlockSize(), 256)
				for b := 0; b < cols; b += block {
					var amax float64
					for _, v := range xt[b : b+block] {
						amax = max(amax, math.Abs(float64(v)))
					}
					for c := b; c < b+block; c++ {
						p := float64(w[r*cols+c]) * float64(xt[c])
						want += p
						abs += math.Abs(p)
						bound += math.Abs(float64(w[r*cols+c])) * amax / 254
					}
				}
				got := float64(out[ti*rows+r])
				if diff := math.Abs(got - want); diff > 1.001*bound+1e-5*abs {
					t.Errorf("%s: out[%d,%d] = %v, want %v within %v", f, ti, r, got, want, bound)
				} else if abs > 0 {
					worst = max(worst, diff/abs)
				}
			}
		}
		t.Logf("%s: worst |error| / Σ|w·x| = %.2g", f, worst)
	}
}

// TestInt8BatchInvariant checks that in the int8 mode too a row's result
// does not depend on the rest of its batch or on GOMAXPROCS, and that
// float weights stay exact.
func TestInt8BatchInvariant(t *testing.T) {
	useInt8(t)
	const n = 9
	for _, path := range quantPaths() {
		for _, f := range append([]kernel.Format{kernel.F32}, quantFormats...) {
			t.Run(fmt.Sprintf("%v/%v", path, f), func(t *testing.T) {
				usePath(t, path)
				rng := rand.New(rand.NewPCG(25, 26))
				rows, cols := 301, 1024
				var m kernel.Matrix
				if f == kernel.F32 {
					m = newTestMatrix(t, rng, rows, cols, f).m
				} else {
					m, _ = quantizedMatrix(t, rng, f, rows, cols)
				}
				x := int8Inputs(rng, n, cols)
				batched := make([]float32, n*rows)
				kernel.MatMul(batched, x, n, m)
				want := bits(batched)
				single := make([]float32, n*rows)
				for r := range n {
					kernel.MatMul(single[r*rows:(r+1)*rows], x[r*cols:(r+1)*cols], 1, m)
				}
				if d := cmp.Diff(want, bits(single)); d != "" {
					t.Errorf("row by row differs from batched:\n%s", d)
				}
				for _, procs := range []int{1, 3, 64} {
					setGOMAXPROCS(t, procs)
					got := make([]float32, n*rows)
					kernel.MatMul(got, x, n, m)
					if d := cmp.Diff(want, bits(got)); d != "" {
						t.Errorf("GOMAXPROCS=%d differs:\n%s", procs, d)
					}
				}
				if f == kernel.F32 {
					kernel.SetCompute(kernel.ComputeExact)
					exact := make([]float32, n*rows)
					kernel.MatMul(exact, x, n, m)
					useInt8(t)
					if d := cmp.Diff(want, bits(exact)); d != "" {
						t.Errorf("F32 weights differ from the exact mode:\n%s", d)
					}
				}
			})
		}
	}
}

// TestInt8NonFinite checks that an activation row with an infinity or a
// NaN gives NaN in every output of its row, on every path and batch size,
// and leaves the other rows of the batch as they are alone.
func TestInt8NonFinite(t *testing.T) {
	useInt8(t)
	rng := rand.New(rand.NewPCG(23, 24))
	for _, f := range quantFormats {
		cols := 2 * max(256, f.BlockSize())
		m, _ := quantizedMatrix(t, rng, f, 7, cols)
		for _, n := range []int{1, 4, 5} {
			x := int8Inputs(rng, n, cols)
			bad := map[int]float32{0: float32(math.Inf(1))}
			if n > 1 {
				bad[n-1] = float32(math.NaN())
			}
			for r, v := range bad {
				x[r*cols+cols/2+3] = v
			}
			for _, p := range quantPaths() {
				out := int8Product(t, p, m, x, n)
				for r := range n {
					got := out[r*m.Rows() : (r+1)*m.Rows()]
					if _, isBad := bad[r]; isBad {
						for i, v := range got {
							if !math.IsNaN(float64(v)) {
								t.Errorf("%s n=%d on %s: row %d (non-finite input), output %d = %v, want NaN", f, n, p, r, i, v)
							}
						}
						continue
					}
					alone := int8Product(t, p, m, x[r*cols:(r+1)*cols], 1)
					if d := firstBitDiff(got, alone); d != "" {
						t.Errorf("%s n=%d on %s: row %d differs from itself alone: %s", f, n, p, r, d)
					}
				}
			}
		}
	}
}

// TestInt8MixedBlocks checks that one MatMuls call whose products take
// activations in blocks of 32 (Q8_0) and of 256 (the K formats) gives
// each product the bits it has alone: the input is quantized once for
// each block size.
func TestInt8MixedBlocks(t *testing.T) {
	useInt8(t)
	rng := rand.New(rand.NewPCG(27, 28))
	const n, cols = 5, 512
	x := int8Inputs(rng, n, cols)
	var ps []kernel.Product
	var alone [][]float32
	for i, f := range []kernel.Format{kernel.Q8_0, kernel.Q4_K, kernel.Q4_0, kernel.Q6_K} {
		rows := 7 + i
		m, _ := quantizedMatrix(t, rng, f, rows, cols)
		want := make([]float32, n*rows)
		kernel.MatMul(want, x, n, m)
		alone = append(alone, want)
		ps = append(ps, kernel.Product{Out: make([]float32, n*rows), W: m})
	}
	kernel.MatMuls(x, n, ps...)
	for i, p := range ps {
		if d := cmp.Diff(bits(alone[i]), bits(p.Out)); d != "" {
			t.Errorf("%s in a mixed call differs from alone:\n%s", p.W.Format(), d)
		}
	}
}
