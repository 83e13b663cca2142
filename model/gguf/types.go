package gguf

import (
	"fmt"
	"math"
)

// ValueType is the type of a metadata value, as the file encodes it.
type ValueType uint32

// The metadata value types.
const (
	TypeUint8   ValueType = 0
	TypeInt8    ValueType = 1
	TypeUint16  ValueType = 2
	TypeInt16   ValueType = 3
	TypeUint32  ValueType = 4
	TypeInt32   ValueType = 5
	TypeFloat32 ValueType = 6
	TypeBool    ValueType = 7
	TypeString  ValueType = 8
	TypeArray   ValueType = 9
	TypeUint64  ValueType = 10
	TypeInt64   ValueType = 11
	TypeFloat64 ValueType = 12
)

var valueTypeNames = [...]string{
	"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
	"bool", "string", "array", "uint64", "int64", "float64",
}

func (t ValueType) String() string {
	if int(t) < len(valueTypeNames) {
		return valueTypeNames[t]
	}
	return fmt.Sprintf("ValueType(%d)", uint32(t))
}

// Valid reports whether t is a known value type.
func (t ValueType) Valid() bool { return int(t) < len(valueTypeNames) }

// size is the encoded size of a scalar of type t; for strings and arrays it
// is the smallest encoding (an empty one), which bounds how many of them
// the bytes left can hold.
func (t ValueType) size() int {
	switch t {
	case TypeUint8, TypeInt8, TypeBool:
		return 1
	case TypeUint16, TypeInt16:
		return 2
	case TypeUint32, TypeInt32, TypeFloat32:
		return 4
	case TypeUint64, TypeInt64, TypeFloat64, TypeString:
		return 8
	case TypeArray:
		return 12
	}
	return 0
}

// TensorType is a tensor's storage type, GGML's ggml_type.
type TensorType uint32

// The tensor types. Their numbers are GGML's; the gaps are types GGML has
// retired.
const (
	TypeF32     TensorType = 0
	TypeF16     TensorType = 1
	TypeQ4_0    TensorType = 2
	TypeQ4_1    TensorType = 3
	TypeQ5_0    TensorType = 6
	TypeQ5_1    TensorType = 7
	TypeQ8_0    TensorType = 8
	TypeQ8_1    TensorType = 9
	TypeQ2_K    TensorType = 10
	TypeQ3_K    TensorType = 11
	TypeQ4_K    TensorType = 12
	TypeQ5_K    TensorType = 13
	TypeQ6_K    TensorType = 14
	TypeQ8_K    TensorType = 15
	TypeIQ2_XXS TensorType = 16
	TypeIQ2_XS  TensorType = 17
	TypeIQ3_XXS TensorType = 18
	TypeIQ1_S   TensorType = 19
	TypeIQ4_NL  TensorType = 20
	TypeIQ3_S   TensorType = 21
	TypeIQ2_S   TensorType = 22
	TypeIQ4_XS  TensorType = 23
	TypeI8      TensorType = 24
	TypeI16     TensorType = 25
	TypeI32     TensorType = 26
	TypeI64     TensorType = 27
	TypeF64     TensorType = 28
	TypeIQ1_M   TensorType = 29
	TypeBF16    TensorType = 30
	TypeTQ1_0   TensorType = 34
	TypeTQ2_0   TensorType = 35
)

// tensorTypeInfo is a type's name and block layout: blockSize values are
// stored in blockBytes bytes.
type tensorTypeInfo struct {
	name                  string
	blockSize, blockBytes int
}

const qk = 256 // values in a K-quant super-block

var tensorTypes = map[TensorType]tensorTypeInfo{
	TypeF32:     {"F32", 1, 4},
	TypeF16:     {"F16", 1, 2},
	TypeQ4_0:    {"Q4_0", 32, 2 + 16},
	TypeQ4_1:    {"Q4_1", 32, 2 + 2 + 16},
	TypeQ5_0:    {"Q5_0", 32, 2 + 4 + 16},
	TypeQ5_1:    {"Q5_1", 32, 2 + 2 + 4 + 16},
	TypeQ8_0:    {"Q8_0", 32, 2 + 32},
	TypeQ8_1:    {"Q8_1", 32, 4 + 4 + 32},
	TypeQ2_K:    {"Q2_K", qk, 2 + 2 + qk/16 + qk/4},
	TypeQ3_K:    {"Q3_K", qk, 2 + qk/4 + qk/8 + 12},
	TypeQ4_K:    {"Q4_K", qk, 2 + 2 + qk/2 + 12},
	TypeQ5_K:    {"Q5_K", qk, 2 + 2 + qk/2 + qk/8 + 12},
	TypeQ6_K:    {"Q6_K", qk, 2 + qk/2 + qk/4 + qk/16},
	TypeQ8_K:    {"Q8_K", qk, 4 + qk + qk/8},
	TypeIQ2_XXS: {"IQ2_XXS", qk, 2 + qk/4},
	TypeIQ2_XS:  {"IQ2_XS", qk, 2 + qk/4 + qk/32},
	TypeIQ3_XXS: {"IQ3_XXS", qk, 2 + qk/4 + qk/8},
	TypeIQ1_S:   {"IQ1_S", qk, 2 + qk/8 + qk/16},
	TypeIQ4_NL:  {"IQ4_NL", 32, 2 + 16},
	TypeIQ3_S:   {"IQ3_S", qk, 2 + qk/4 + qk/8 + qk/32 + 4},
	TypeIQ2_S:   {"IQ2_S", qk, 2 + qk/4 + qk/16},
	TypeIQ4_XS:  {"IQ4_XS", qk, 2 + 2 + qk/2 + qk/64},
	TypeI8:      {"I8", 1, 1},
	TypeI16:     {"I16", 1, 2},
	TypeI32:     {"I32", 1, 4},
	TypeI64:     {"I64", 1, 8},
	TypeF64:     {"F64", 1, 8},
	TypeIQ1_M:   {"IQ1_M", qk, qk/8 + qk/16 + qk/32},
	TypeBF16:    {"BF16", 1, 2},
	TypeTQ1_0:   {"TQ1_0", qk, 2 + 4*13},
	TypeTQ2_0:   {"TQ2_0", qk, 2 + 64},
}

// String is the type's GGML name ("F32", "Q4_K"); for the types moegrid's
// kernels run it is also the kernel.Format name.
func (t TensorType) String() string {
	if info, ok := tensorTypes[t]; ok {
		return info.name
	}
	return fmt.Sprintf("TensorType(%d)", uint32(t))
}

// Valid reports whether t is a known tensor type.
func (t TensorType) Valid() bool {
	_, ok := tensorTypes[t]
	return ok
}

// BlockSize is the number of values in one block of t (1 for the plain
// types); a tensor's first dimension must be a multiple of it. It is 0 for
// an unknown type.
func (t TensorType) BlockSize() int { return tensorTypes[t].blockSize }

// BlockBytes is the stored size of one block of t; 0 for an unknown type.
func (t TensorType) BlockBytes() int { return tensorTypes[t].blockBytes }

// ParseTensorType returns the type named name ("Q8_0", "f16"; case is
// ignored).
func ParseTensorType(name string) (TensorType, error) {
	for t, info := range tensorTypes {
		if equalFold(info.name, name) {
			return t, nil
		}
	}
	return 0, fmt.Errorf("%w: unknown tensor type %q", ErrType, name)
}

func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		x, y := a[i], b[i]
		if 'a' <= x && x <= 'z' {
			x -= 'a' - 'A'
		}
		if 'a' <= y && y <= 'z' {
			y -= 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// maxDims is GGML's GGML_MAX_DIMS.
const maxDims = 4

// tensorBytes is the stored size of a tensor of type t and shape dims
// (GGML order: dims[0] is the contiguous one), or an error naming what is
// wrong with them.
func tensorBytes(t TensorType, dims []uint64) (uint64, error) {
	info, ok := tensorTypes[t]
	if !ok {
		return 0, fmt.Errorf("%w: unknown type %d", ErrTensor, uint32(t))
	}
	if len(dims) == 0 || len(dims) > maxDims {
		return 0, fmt.Errorf("%w: %d dimensions, want 1 to %d", ErrTensor, len(dims), maxDims)
	}
	if dims[0]%uint64(info.blockSize) != 0 {
		return 0, fmt.Errorf("%w: first dimension %d of a %s tensor is not a multiple of its %d-value blocks", ErrTensor, dims[0], info.name, info.blockSize)
	}
	size := dims[0] / uint64(info.blockSize) * uint64(info.blockBytes)
	for _, d := range dims {
		if d == 0 || d > math.MaxInt64 {
			return 0, fmt.Errorf("%w: dimension %d out of range in shape %v", ErrTensor, d, dims)
		}
	}
	for _, d := range dims[1:] {
		if size > math.MaxInt64/d {
			return 0, fmt.Errorf("%w: shape %v of %s overflows", ErrTensor, dims, info.name)
		}
		size *= d
	}
	return size, nil
}
