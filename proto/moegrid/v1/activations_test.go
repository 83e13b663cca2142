package moegridv1

import (
	"errors"
	"math"
	"slices"
	"testing"
)

func TestActivationsRoundTrip(t *testing.T) {
	x := []float32{0, -0, 1, -1.5, 3.1415927, float32(math.Inf(1)), 1e-40, 65504}
	for _, tc := range []struct {
		dtype DType
		exact bool
	}{{DType_DTYPE_F32, true}, {DType_DTYPE_BF16, false}} {
		b, err := AppendActivations(nil, x, tc.dtype)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != len(x)*ElementSize(tc.dtype) {
			t.Fatalf("%v: %d bytes for %d elements", tc.dtype, len(b), len(x))
		}
		got := make([]float32, len(x))
		if err := DecodeActivations(got, b, 2, 4, tc.dtype); err != nil {
			t.Fatal(err)
		}
		if tc.exact && !slices.Equal(got, x) {
			t.Errorf("%v: %v, want %v", tc.dtype, got, x)
		}
		for i := range x {
			// BF16 keeps 8 significant bits; subnormals keep fewer.
			if d := math.Abs(float64(got[i] - x[i])); d > max(math.Abs(float64(x[i]))/128, 1e-38) && !math.IsInf(float64(x[i]), 0) {
				t.Errorf("%v: element %d = %v, want about %v", tc.dtype, i, got[i], x[i])
			}
		}
	}
}

func TestDecodeActivationsErrors(t *testing.T) {
	for _, tc := range []struct {
		name      string
		data      []byte
		rows, dim int
		dtype     DType
		dst       int
	}{
		{"unspecified dtype", make([]byte, 8), 1, 2, DType_DTYPE_UNSPECIFIED, 2},
		{"unknown dtype", make([]byte, 8), 1, 2, DType(99), 2},
		{"short", make([]byte, 7), 1, 2, DType_DTYPE_F32, 2},
		{"long", make([]byte, 9), 1, 2, DType_DTYPE_F32, 2},
		{"negative rows", nil, -1, 2, DType_DTYPE_F32, 2},
		{"overflowing shape", nil, 1 << 40, 1 << 40, DType_DTYPE_F32, 0},
		{"small destination", make([]byte, 8), 1, 2, DType_DTYPE_F32, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := DecodeActivations(make([]float32, tc.dst), tc.data, tc.rows, tc.dim, tc.dtype)
			if !errors.Is(err, ErrPayload) {
				t.Errorf("got %v, want ErrPayload", err)
			}
		})
	}
}

// FuzzDecodeActivations: any payload and shape either decodes exactly
// rows·dim elements or fails with ErrPayload; it never panics.
func FuzzDecodeActivations(f *testing.F) {
	f.Add([]byte{0, 0, 128, 63}, 1, 1, int32(DType_DTYPE_F32))
	f.Add([]byte{128, 63, 0, 64}, 1, 2, int32(DType_DTYPE_BF16))
	f.Add([]byte{}, 0, 0, int32(DType_DTYPE_F32))
	f.Fuzz(func(t *testing.T, data []byte, rows, dim int, dtype int32) {
		n := 0
		if rows > 0 && dim > 0 && rows <= 1<<16 && dim <= 1<<16 {
			n = rows * dim
		}
		dst := make([]float32, n)
		err := DecodeActivations(dst, data, rows, dim, DType(dtype))
		if err != nil {
			if !errors.Is(err, ErrPayload) {
				t.Fatalf("error %v does not wrap ErrPayload", err)
			}
			return
		}
		if len(data) != rows*dim*ElementSize(DType(dtype)) {
			t.Fatalf("accepted %d bytes for %d×%d of %v", len(data), rows, dim, DType(dtype))
		}
		back, err := AppendActivations(nil, dst[:rows*dim], DType(dtype))
		if err != nil {
			t.Fatal(err)
		}
		if DType(dtype) == DType_DTYPE_F32 && len(back) != len(data) {
			t.Fatalf("round trip changed the length")
		}
	})
}
