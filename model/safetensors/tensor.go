package safetensors

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"
)

// littleEndian reports whether the host stores numbers little-endian, as the
// format does, so that tensor data can be viewed in place.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// Tensor is one tensor of a file: its name, dtype, shape and raw
// little-endian data.
type Tensor struct {
	Name  string
	DType DType
	// Shape holds the dimensions, outermost first; empty for a scalar.
	Shape []int
	// Data is the tensor's bytes, row-major. For tensors of a File or
	// Checkpoint it aliases the file mapping: it is read-only and valid
	// only until Close.
	Data []byte
}

// NumElements returns the number of elements: the product of the shape, 1
// for a scalar.
func (t Tensor) NumElements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// checkData returns an error unless t's dtype is one of want and Data holds
// exactly the bytes that the shape calls for.
func (t Tensor) checkData(want ...DType) error {
	ok := false
	for _, d := range want {
		ok = ok || t.DType == d
	}
	if !ok {
		return fmt.Errorf("%w: tensor %q is %s, want %v", ErrDType, t.Name, t.DType, want)
	}
	size, ok := byteSize(t.DType, t.Shape)
	if !ok || size != int64(len(t.Data)) {
		return fmt.Errorf("%w: tensor %q: shape %v of %s does not match %d data bytes", ErrShape, t.Name, t.Shape, t.DType, len(t.Data))
	}
	return nil
}

// Float32s returns the data of an F32 tensor as float32s. On little-endian
// hosts with suitably aligned data (always the case for files written by
// this package or the reference implementation) the result aliases Data, so
// it is read-only like Data; otherwise it is a copy.
func (t Tensor) Float32s() ([]float32, error) {
	if err := t.checkData(F32); err != nil {
		return nil, err
	}
	if len(t.Data) == 0 {
		return []float32{}, nil
	}
	p := unsafe.Pointer(unsafe.SliceData(t.Data))
	if littleEndian && uintptr(p)%unsafe.Alignof(float32(0)) == 0 {
		return unsafe.Slice((*float32)(p), len(t.Data)/4), nil
	}
	out := make([]float32, len(t.Data)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
	}
	return out, nil
}

// Uint16s returns the data of a BF16 or F16 tensor as the elements' bits.
// Like Float32s, it aliases Data when it can and copies otherwise.
func (t Tensor) Uint16s() ([]uint16, error) {
	if err := t.checkData(BF16, F16); err != nil {
		return nil, err
	}
	return uint16s(t.Data), nil
}

// uint16s views b, whose length is even, as little-endian uint16s.
func uint16s(b []byte) []uint16 {
	if len(b) == 0 {
		return []uint16{}
	}
	p := unsafe.Pointer(unsafe.SliceData(b))
	if littleEndian && uintptr(p)%unsafe.Alignof(uint16(0)) == 0 {
		return unsafe.Slice((*uint16)(p), len(b)/2)
	}
	out := make([]uint16, len(b)/2)
	for i := range out {
		out[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return out
}

// ToFloat32 converts the data of an F32, BF16 or F16 tensor to float32s in
// dst, which must have exactly NumElements elements. The conversions are
// exact. Other dtypes give an error wrapping [ErrDType].
func (t Tensor) ToFloat32(dst []float32) error {
	if err := t.checkData(F32, BF16, F16); err != nil {
		return err
	}
	if n := len(t.Data) / t.DType.Size(); len(dst) != n {
		return fmt.Errorf("%w: tensor %q has %d elements, destination %d", ErrShape, t.Name, n, len(dst))
	}
	switch t.DType {
	case F32:
		src, _ := t.Float32s()
		copy(dst, src)
	case BF16:
		bf16ToFloat32(dst, uint16s(t.Data))
	case F16:
		f16ToFloat32(dst, uint16s(t.Data))
	}
	return nil
}

// bf16ToFloat32 converts src to dst, which have the same length. A bfloat16
// is the high half of a float32, so the conversion is a shift; it is
// unrolled by four, which the benchmark shows to help.
func bf16ToFloat32(dst []float32, src []uint16) {
	dst = dst[:len(src)]
	i := 0
	for ; i+4 <= len(src); i += 4 {
		s := src[i : i+4 : i+4]
		d := dst[i : i+4 : i+4]
		d[0] = math.Float32frombits(uint32(s[0]) << 16)
		d[1] = math.Float32frombits(uint32(s[1]) << 16)
		d[2] = math.Float32frombits(uint32(s[2]) << 16)
		d[3] = math.Float32frombits(uint32(s[3]) << 16)
	}
	for ; i < len(src); i++ {
		dst[i] = math.Float32frombits(uint32(src[i]) << 16)
	}
}

// f16ToFloat32 converts src to dst, which have the same length. Normal
// numbers, the common case, are converted inline: the exponent is rebiased
// from 15 to 127 and the mantissa widened.
func f16ToFloat32(dst []float32, src []uint16) {
	dst = dst[:len(src)]
	for i, h := range src {
		if e := h & 0x7c00; e != 0 && e != 0x7c00 {
			dst[i] = math.Float32frombits(uint32(h&0x8000)<<16 | (uint32(h&0x7fff)<<13 + (127-15)<<23))
		} else {
			dst[i] = F16ToFloat32(h)
		}
	}
}
