package safetensors

import (
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"testing"
	"unsafe"
)

// f32Bytes encodes vs little-endian.
func f32Bytes(vs ...float32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

// u16Bytes encodes vs little-endian.
func u16Bytes(vs ...uint16) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint16(b, v)
	}
	return b
}

// misaligned returns a copy of b that starts at an odd address.
func misaligned(b []byte) []byte {
	buf := make([]byte, len(b)+1)
	if uintptr(unsafe.Pointer(&buf[0]))%2 == 1 {
		return append(buf[:0], b...)
	}
	return append(buf[1:1], b...)
}

func TestTensorConversions(t *testing.T) {
	inf, nan := float32(math.Inf(1)), float32(math.NaN())
	values := []float32{0, 1, -2.5, 0x1p-24, 65504, inf, -inf}
	var bf, hf []uint16
	for _, v := range values {
		bf = append(bf, Float32ToBF16(v))
		hf = append(hf, Float32ToF16(v))
	}
	tests := []struct {
		name string
		t    Tensor
		want []float32
		bits []uint16 // want of Uint16s, nil if it must fail
		f32  bool     // whether Float32s must succeed
	}{
		{"F32", Tensor{"x", F32, []int{7}, f32Bytes(values...)}, values, nil, true},
		{"F32 misaligned", Tensor{"x", F32, []int{7}, misaligned(f32Bytes(values...))}, values, nil, true},
		{"F32 scalar", Tensor{"x", F32, []int{}, f32Bytes(3)}, []float32{3}, nil, true},
		{"F32 empty", Tensor{"x", F32, []int{0, 4}, nil}, []float32{}, nil, true},
		{"BF16", Tensor{"x", BF16, []int{1, 7}, u16Bytes(bf...)}, []float32{0, 1, -2.5, 0x1p-24, 65536, inf, -inf}, bf, false},
		{"BF16 misaligned", Tensor{"x", BF16, []int{7, 1}, misaligned(u16Bytes(bf...))}, []float32{0, 1, -2.5, 0x1p-24, 65536, inf, -inf}, bf, false},
		{"F16", Tensor{"x", F16, []int{7}, u16Bytes(hf...)}, values, hf, false},
		{"F16 misaligned", Tensor{"x", F16, []int{7}, misaligned(u16Bytes(hf...))}, values, hf, false},
		{"F16 subnormals", Tensor{"x", F16, []int{3}, u16Bytes(0x0001, 0x83ff, 0x0200)}, []float32{0x1p-24, -0x3ffp-24, 0x1p-15}, []uint16{0x0001, 0x83ff, 0x0200}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := tt.t.NumElements(); n != len(tt.want) {
				t.Fatalf("NumElements = %d, want %d", n, len(tt.want))
			}
			dst := make([]float32, len(tt.want))
			if err := tt.t.ToFloat32(dst); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(dst, tt.want) {
				t.Errorf("ToFloat32 = %v, want %v", dst, tt.want)
			}
			f, err := tt.t.Float32s()
			if tt.f32 {
				if err != nil || !slices.Equal(f, tt.want) {
					t.Errorf("Float32s = %v, %v; want %v", f, err, tt.want)
				}
			} else if !errors.Is(err, ErrDType) {
				t.Errorf("Float32s of %s = %v; want ErrDType", tt.t.DType, err)
			}
			u, err := tt.t.Uint16s()
			if tt.bits != nil {
				if err != nil || !slices.Equal(u, tt.bits) {
					t.Errorf("Uint16s = %#x, %v; want %#x", u, err, tt.bits)
				}
			} else if !errors.Is(err, ErrDType) {
				t.Errorf("Uint16s of %s = %v; want ErrDType", tt.t.DType, err)
			}
		})
	}

	nanT := Tensor{"n", BF16, []int{1}, u16Bytes(Float32ToBF16(nan))}
	dst := make([]float32, 1)
	if err := nanT.ToFloat32(dst); err != nil || dst[0] == dst[0] {
		t.Errorf("ToFloat32(BF16 NaN) = %v, %v", dst, err)
	}
}

func TestTensorViewsAlias(t *testing.T) {
	data := f32Bytes(1, 2)
	f, err := Tensor{"x", F32, []int{2}, data}.Float32s()
	if err != nil {
		t.Fatal(err)
	}
	if !littleEndian {
		t.Skip("views are copies on big-endian hosts")
	}
	copy(data, f32Bytes(5))
	if f[0] != 5 {
		t.Errorf("Float32s did not alias aligned data: %v", f)
	}
	data = u16Bytes(1, 2)
	u, _ := Tensor{"x", BF16, []int{2}, data}.Uint16s()
	data[0] = 9
	if u[0] != 9 {
		t.Errorf("Uint16s did not alias aligned data: %v", u)
	}
}

func TestTensorConversionErrors(t *testing.T) {
	tests := []struct {
		name string
		t    Tensor
		dst  int
		want error
	}{
		{"I32", Tensor{"x", I32, []int{2}, make([]byte, 8)}, 2, ErrDType},
		{"U8", Tensor{"x", U8, []int{2}, make([]byte, 2)}, 2, ErrDType},
		{"unknown dtype", Tensor{"x", "Q4", []int{2}, make([]byte, 2)}, 2, ErrDType},
		{"short data", Tensor{"x", F32, []int{2}, make([]byte, 7)}, 2, ErrShape},
		{"long data", Tensor{"x", BF16, []int{2}, make([]byte, 6)}, 2, ErrShape},
		{"negative shape", Tensor{"x", F16, []int{-2}, nil}, 0, ErrShape},
		{"short dst", Tensor{"x", F32, []int{2}, make([]byte, 8)}, 1, ErrShape},
		{"long dst", Tensor{"x", BF16, []int{2}, make([]byte, 4)}, 3, ErrShape},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.t.ToFloat32(make([]float32, tt.dst)); !errors.Is(err, tt.want) {
				t.Errorf("ToFloat32 = %v; want %v", err, tt.want)
			}
		})
	}
	if _, err := (Tensor{"x", F32, []int{2}, make([]byte, 7)}).Float32s(); !errors.Is(err, ErrShape) {
		t.Errorf("Float32s(short) = %v; want ErrShape", err)
	}
	if _, err := (Tensor{"x", BF16, []int{2}, make([]byte, 3)}).Uint16s(); !errors.Is(err, ErrShape) {
		t.Errorf("Uint16s(short) = %v; want ErrShape", err)
	}
}

// BenchmarkToFloat32BF16 converts a 4096×1024 BF16 tensor, a slice of an
// expert's weight matrix.
func BenchmarkToFloat32BF16(b *testing.B) {
	const n = 4096 * 1024
	src := make([]byte, 2*n)
	for i := range n {
		binary.LittleEndian.PutUint16(src[2*i:], Float32ToBF16(float32(i%977)-488))
	}
	t := Tensor{"w", BF16, []int{4096, 1024}, src}
	dst := make([]float32, n)
	b.SetBytes(2 * n)
	for b.Loop() {
		if err := t.ToFloat32(dst); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkToFloat32F16(b *testing.B) {
	const n = 4096 * 1024
	src := make([]byte, 2*n)
	for i := range n {
		binary.LittleEndian.PutUint16(src[2*i:], Float32ToF16(float32(i%977)/64-7))
	}
	t := Tensor{"w", F16, []int{4096, 1024}, src}
	dst := make([]float32, n)
	b.SetBytes(2 * n)
	for b.Loop() {
		if err := t.ToFloat32(dst); err != nil {
			b.Fatal(err)
		}
	}
}

func TestSliceConversionsExhaustive(t *testing.T) {
	src := make([]uint16, 1<<16)
	for i := range src {
		src[i] = uint16(i)
	}
	dst := make([]float32, len(src))
	f16ToFloat32(dst, src)
	for i, h := range src {
		if got, want := math.Float32bits(dst[i]), math.Float32bits(F16ToFloat32(h)); got != want {
			t.Fatalf("f16ToFloat32(%#04x) = %#08x, want %#08x", h, got, want)
		}
	}
	// Odd lengths exercise the unrolled loop's tail.
	for _, n := range []int{0, 1, 3, 4, 5, 1<<16 - 1} {
		bf16ToFloat32(dst[:n], src[:n])
		for i, h := range src[:n] {
			if math.Float32bits(dst[i]) != uint32(h)<<16 {
				t.Fatalf("bf16ToFloat32 length %d: element %d = %#08x", n, i, math.Float32bits(dst[i]))
			}
		}
	}
}

// unsafePointer returns the address of b's first element.
func unsafePointer(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }
