package kernel_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moegrid/moegrid/model/kernel"
	"github.com/moegrid/moegrid/model/safetensors"
)

var quantFormats = []kernel.Format{kernel.Q8_0, kernel.Q4_0, kernel.Q4_K, kernel.Q5_K, kernel.Q6_K}

// quantGolden is one testdata/quant/<type>.json, written by gen.py from
// GGML's reference C code (see gen.py for how).
type quantGolden struct {
	Input, Quantized, Dequantized, Blocks, BlocksDequantized []byte
}

func readQuantGolden(t *testing.T, f kernel.Format) quantGolden {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "quant", strings.ToLower(string(f))+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var enc struct {
		Input, Quantized, Dequantized, Blocks string
		BlocksDequantized                     string `json:"blocks_dequantized"`
	}
	if err := json.Unmarshal(raw, &enc); err != nil {
		t.Fatal(err)
	}
	var g quantGolden
	for _, p := range []struct {
		dst *[]byte
		src string
	}{{&g.Input, enc.Input}, {&g.Quantized, enc.Quantized}, {&g.Dequantized, enc.Dequantized}, {&g.Blocks, enc.Blocks}, {&g.BlocksDequantized, enc.BlocksDequantized}} {
		if *p.dst, err = base64.StdEncoding.DecodeString(p.src); err != nil {
			t.Fatal(err)
		}
	}
	return g
}

func floatsOf(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(uint32(b[4*i]) | uint32(b[4*i+1])<<8 | uint32(b[4*i+2])<<16 | uint32(b[4*i+3])<<24)
	}
	return out
}

// dequantizeAll dequantizes data, a [rows, cols] matrix in f, row by row.
func dequantizeAll(t testing.TB, f kernel.Format, rows, cols int, data []byte) []float32 {
	t.Helper()
	m, err := kernel.NewMatrix(f, rows, cols, data)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]float32, rows*cols)
	for r := range rows {
		m.Row(out[r*cols:(r+1)*cols], r)
	}
	return out
}

// firstBitDiff reports the first element whose bits differ.
func firstBitDiff(got, want []float32) string {
	if len(got) != len(want) {
		return fmt.Sprintf("%d values, want %d", len(got), len(want))
	}
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			return fmt.Sprintf("value %d is %g (%#08x), want %g (%#08x)", i, got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
		}
	}
	return ""
}

// TestQuantGolden checks dequantization against GGML's dequantize_row_*
// bit for bit, on the reference quantizer's blocks and on random blocks,
// and the quantizers against quantize_row_*_ref byte for byte.
func TestQuantGolden(t *testing.T) {
	for _, f := range quantFormats {
		t.Run(string(f), func(t *testing.T) {
			g := readQuantGolden(t, f)
			bs := f.BlockSize()
			x := floatsOf(g.Input)
			// Rows of two blocks, so the blocks of a row and the rows
			// of a matrix are both exercised.
			cols := 2 * bs
			rows := len(x) / cols
			if d := firstBitDiff(dequantizeAll(t, f, rows, cols, g.Quantized), floatsOf(g.Dequantized)); d != "" {
				t.Errorf("dequantizing reference blocks: %s", d)
			}
			nb := len(floatsOf(g.BlocksDequantized)) / bs
			if d := firstBitDiff(dequantizeAll(t, f, nb, bs, g.Blocks), floatsOf(g.BlocksDequantized)); d != "" {
				t.Errorf("dequantizing random blocks: %s", d)
			}
			q, err := kernel.Quantize(f, rows, cols, x)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(q, g.Quantized) {
				bb := len(q) / (len(x) / bs)
				for b := 0; b < len(q)/bb; b++ {
					if !bytes.Equal(q[b*bb:(b+1)*bb], g.Quantized[b*bb:(b+1)*bb]) {
						t.Errorf("quantized block %d differs from the reference:\n got %x\nwant %x", b, q[b*bb:(b+1)*bb], g.Quantized[b*bb:(b+1)*bb])
						break
					}
				}
			}
		})
	}
}

func quantPaths() []kernel.Path {
	var ps []kernel.Path
	for _, p := range []kernel.Path{kernel.PathAVX512, kernel.PathAVX2, kernel.PathPortable} {
		if p.Supported() {
			ps = append(ps, p)
		}
	}
	return ps
}

// TestQuantMulRowsMatchesF32 checks that a quantized matrix multiplies
// exactly as the F32 matrix of its dequantized rows does, on every path,
// for every batch size and row range.
func TestQuantMulRowsMatchesF32(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	for _, f := range quantFormats {
		rows, cols := 13, 2*max(256, f.BlockSize())
		w := make([]float32, rows*cols)
		for i := range w {
			w[i] = float32(rng.NormFloat64() * 0.05)
		}
		data, err := kernel.Quantize(f, rows, cols, w)
		if err != nil {
			t.Fatal(err)
		}
		qm, err := kernel.NewMatrix(f, rows, cols, data)
		if err != nil {
			t.Fatal(err)
		}
		if qm.Format() != f || qm.Rows() != rows || qm.Cols() != cols || qm.Bytes() != int64(len(data)) {
			t.Errorf("%s: matrix %s [%d, %d] of %d bytes", f, qm.Format(), qm.Rows(), qm.Cols(), qm.Bytes())
		}
		fm, err := kernel.FromFloat32(rows, cols, dequantizeAll(t, f, rows, cols, data))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range quantPaths() {
			restore, err := kernel.UsePath(p)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range []int{1, 3, 4, 9} {
				x := make([]float32, n*cols)
				for i := range x {
					x[i] = float32(rng.NormFloat64())
				}
				for _, r := range [][2]int{{0, rows}, {1, 2}, {3, 11}, {12, 13}} {
					got := make([]float32, n*rows)
					want := make([]float32, n*rows)
					qm.MulRows(got, x, n, r[0], r[1])
					fm.MulRows(want, x, n, r[0], r[1])
					if d := firstBitDiff(got, want); d != "" {
						t.Errorf("%s on %s, n=%d, rows [%d, %d): %s", f, p, n, r[0], r[1], d)
					}
				}
			}
			restore()
		}
	}
}

// TestQuantizeError bounds each quantizer's round-trip error on Gaussian
// weights, relative to their standard deviation: a check of the formats
// independent of the reference's bytes.
func TestQuantizeError(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 1 << 14
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	for _, tc := range []struct {
		f        kernel.Format
		rms, max float64
	}{
		{kernel.Q8_0, 0.006, 0.02},
		{kernel.Q4_0, 0.11, 0.35},
		{kernel.Q4_K, 0.09, 0.3},
		{kernel.Q5_K, 0.045, 0.15},
		{kernel.Q6_K, 0.023, 0.08},
	} {
		q, err := kernel.Quantize(tc.f, n/1024, 1024, x)
		if err != nil {
			t.Fatal(err)
		}
		y := dequantizeAll(t, tc.f, n/1024, 1024, q)
		var sum, worst float64
		for i := range x {
			d := math.Abs(float64(y[i] - x[i]))
			sum += d * d
			worst = max(worst, d)
		}
		if rms := math.Sqrt(sum / n); rms > tc.rms || worst > tc.max {
			t.Errorf("%s: rms error %.4f (bound %.4f), max %.4f (bound %.4f)", tc.f, rms, tc.rms, worst, tc.max)
		}
	}
}

// TestQuantizeFloats checks that the float formats quantize by the
// conversions the safetensors package defines.
func TestQuantizeFloats(t *testing.T) {
	x := []float32{1, -2.5, 0.1, 65504, 3e-8, float32(math.Inf(-1))}
	for _, tc := range []struct {
		f    kernel.Format
		conv func(float32) float32
	}{
		{kernel.F32, func(v float32) float32 { return v }},
		{kernel.BF16, func(v float32) float32 { return safetensors.BF16ToFloat32(safetensors.Float32ToBF16(v)) }},
		{kernel.F16, func(v float32) float32 { return safetensors.F16ToFloat32(safetensors.Float32ToF16(v)) }},
	} {
		q, err := kernel.Quantize(tc.f, 2, 3, x)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]float32, len(x))
		for i, v := range x {
			want[i] = tc.conv(v)
		}
		if d := firstBitDiff(dequantizeAll(t, tc.f, 2, 3, q), want); d != "" {
			t.Errorf("%s: %s", tc.f, d)
		}
	}
}

// TestQuantMulRowsEmpty multiplies no input rows and no weight rows.
func TestQuantMulRowsEmpty(t *testing.T) {
	for _, f := range quantFormats {
		data, err := kernel.Quantize(f, 4, 256, make([]float32, 4*256))
		if err != nil {
			t.Fatal(err)
		}
		m, err := kernel.NewMatrix(f, 4, 256, data)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range quantPaths() {
			restore, err := kernel.UsePath(p)
			if err != nil {
				t.Fatal(err)
			}
			m.MulRows(nil, nil, 0, 0, 4)
			out := []float32{7, 7, 7, 7}
			m.MulRows(out, make([]float32, 256), 1, 2, 2)
			if out[2] != 7 {
				t.Errorf("%s on %s: an empty row range wrote %v", f, p, out)
			}
			restore()
		}
	}
}

func TestQuantizeErrors(t *testing.T) {
	if _, err := kernel.Quantize(kernel.Q4_K, 1, 128, make([]float32, 128)); err == nil {
		t.Errorf("Q4_K row of 128: no error")
	}
	if _, err := kernel.Quantize(kernel.Q8_0, 2, 32, make([]float32, 32)); err == nil {
		t.Errorf("short input: no error")
	}
	if _, err := kernel.Quantize("Q3_K", 1, 256, make([]float32, 256)); err == nil {
		t.Errorf("unknown format: no error")
	}
	nan := make([]float32, 64)
	nan[40] = float32(math.NaN())
	if _, err := kernel.Quantize(kernel.Q8_0, 2, 32, nan); err == nil || !strings.Contains(err.Error(), "value 40 (row 1)") {
		t.Errorf("NaN input: %v", err)
	}
	if _, err := kernel.NewMatrix(kernel.Q6_K, 2, 256, make([]byte, 210)); err == nil {
		t.Errorf("short Q6_K data: no error")
	}
}

// randomBlocks returns nb random blocks of f whose F16 scales are finite,
// so that every value dequantizes to a number.
func randomBlocks(rng *rand.Rand, f kernel.Format, nb int) []byte {
	bb := map[kernel.Format]int{kernel.Q8_0: 34, kernel.Q4_0: 18, kernel.Q4_K: 144, kernel.Q5_K: 176, kernel.Q6_K: 210}[f]
	data := make([]byte, nb*bb)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	finiteScales(f, data, bb)
	return data
}

// finiteScales clears the top exponent bit of every F16 scale in data,
// blocks of bb bytes of f, so that none is an infinity or NaN.
func finiteScales(f kernel.Format, data []byte, bb int) {
	offsets := map[kernel.Format][]int{kernel.Q8_0: {0}, kernel.Q4_0: {0}, kernel.Q4_K: {0, 2}, kernel.Q5_K: {0, 2}, kernel.Q6_K: {208}}[f]
	for b := 0; b+bb <= len(data); b += bb {
		for _, off := range offsets {
			data[b+off+1] &^= 0x40
		}
	}
}

// TestQuantPathsAgree checks the SIMD dequantizers against the portable
// ones on random blocks.
func TestQuantPathsAgree(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, f := range quantFormats {
		const rows, cols = 7, 1024
		data := randomBlocks(rng, f, rows*cols/f.BlockSize())
		want := dequantizeOn(t, kernel.PathPortable, f, rows, cols, data)
		for _, p := range quantPaths() {
			if d := firstBitDiff(dequantizeOn(t, p, f, rows, cols, data), want); d != "" {
				t.Errorf("%s on %s: %s", f, p, d)
			}
		}
	}
}

func dequantizeOn(t testing.TB, p kernel.Path, f kernel.Format, rows, cols int, data []byte) []float32 {
	t.Helper()
	restore, err := kernel.UsePath(p)
	if err != nil {
		t.Fatal(err)
	}
	defer restore()
	return dequantizeAll(t, f, rows, cols, data)
}

// FuzzQuantRow checks, for arbitrary blocks, that every path dequantizes
// to the same bits.
func FuzzQuantRow(f *testing.F) {
	rng := rand.New(rand.NewPCG(7, 8))
	for i, qf := range quantFormats {
		f.Add(uint8(i), randomBlocks(rng, qf, 2))
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		qf := quantFormats[int(which)%len(quantFormats)]
		bb := int(mustBytes(t, qf, 1, qf.BlockSize()))
		nb := len(data) / bb
		if nb == 0 {
			return
		}
		data = bytes.Clone(data[:nb*bb])
		finiteScales(qf, data, bb)
		want := dequantizeOn(t, kernel.PathPortable, qf, 1, nb*qf.BlockSize(), data)
		for _, p := range quantPaths() {
			if d := firstBitDiff(dequantizeOn(t, p, qf, 1, nb*qf.BlockSize(), data), want); d != "" {
				t.Fatalf("%s on %s: %s", qf, p, d)
			}
		}
	})
}

func mustBytes(t testing.TB, f kernel.Format, rows, cols int) int64 {
	t.Helper()
	n, err := f.MatrixBytes(rows, cols)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestQuantMulRowsRandomBlocks is TestQuantMulRowsMatchesF32 on random
// blocks, whose scales and values take every bit pattern (finite scales).
func TestQuantMulRowsRandomBlocks(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for _, f := range quantFormats {
		rows, cols := 9, 3*max(256, f.BlockSize())
		data := randomBlocks(rng, f, rows*cols/f.BlockSize())
		qm, err := kernel.NewMatrix(f, rows, cols, data)
		if err != nil {
			t.Fatal(err)
		}
		fm, err := kernel.FromFloat32(rows, cols, dequantizeOn(t, kernel.PathPortable, f, rows, cols, data))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range quantPaths() {
			restore, err := kernel.UsePath(p)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range []int{1, 2, 5} {
				x := make([]float32, n*cols)
				for i := range x {
					x[i] = float32(rng.NormFloat64())
				}
				got := make([]float32, n*rows)
				want := make([]float32, n*rows)
				qm.MulRows(got, x, n, 0, rows)
				fm.MulRows(want, x, n, 0, rows)
				if d := firstBitDiff(got, want); d != "" {
					t.Errorf("%s on %s, n=%d: %s", f, p, n, d)
				}
			}
			restore()
		}
	}
}
