package safetensors

import (
	"fmt"
	"math"
)

// DType is the element type of a tensor, spelled as in the file header.
type DType string

// The dtypes of the safetensors format. Sub-byte types (F4, F6_E2M3,
// F6_E3M2) are not supported: their tensors cannot be addressed by byte.
const (
	BOOL       DType = "BOOL"
	U8         DType = "U8"
	I8         DType = "I8"
	F8E5M2     DType = "F8_E5M2"
	F8E4M3     DType = "F8_E4M3"
	F8E8M0     DType = "F8_E8M0"
	F8E4M3FNUZ DType = "F8_E4M3FNUZ"
	F8E5M2FNUZ DType = "F8_E5M2FNUZ"
	I16        DType = "I16"
	U16        DType = "U16"
	F16        DType = "F16"
	BF16       DType = "BF16"
	I32        DType = "I32"
	U32        DType = "U32"
	F32        DType = "F32"
	C64        DType = "C64"
	F64        DType = "F64"
	I64        DType = "I64"
	U64        DType = "U64"
)

// dtypeInfo describes a supported dtype. rank is the dtype's position in the
// reference implementation's Dtype enum, which orders tensors on write.
type dtypeInfo struct {
	size int
	rank int
}

var dtypes = map[DType]dtypeInfo{
	BOOL:       {1, 0},
	U8:         {1, 4},
	I8:         {1, 5},
	F8E5M2:     {1, 6},
	F8E4M3:     {1, 7},
	F8E8M0:     {1, 8},
	F8E4M3FNUZ: {1, 9},
	F8E5M2FNUZ: {1, 10},
	I16:        {2, 11},
	U16:        {2, 12},
	F16:        {2, 13},
	BF16:       {2, 14},
	I32:        {4, 15},
	U32:        {4, 16},
	F32:        {4, 17},
	C64:        {8, 18},
	F64:        {8, 19},
	I64:        {8, 20},
	U64:        {8, 21},
}

// ParseDType returns the dtype named s, or an error wrapping [ErrDType] if s
// is not a supported dtype name. Names are case-sensitive, as in the format.
func ParseDType(s string) (DType, error) {
	d := DType(s)
	if _, ok := dtypes[d]; !ok {
		return "", fmt.Errorf("%w %q", ErrDType, s)
	}
	return d, nil
}

// Size returns the size in bytes of one element of d, or 0 if d is not a
// supported dtype.
func (d DType) Size() int { return dtypes[d].size }

// Valid reports whether d is a supported dtype.
func (d DType) Valid() bool { return d.Size() > 0 }

// BF16ToFloat32 converts a bfloat16 value, given by its bits, to float32.
// The conversion is exact.
func BF16ToFloat32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// Float32ToBF16 converts f to bfloat16 bits, rounding to nearest, ties to
// even. Values too large for bfloat16 become infinities; NaNs stay NaNs
// (quiet, keeping the sign and the high payload bits).
func Float32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN: truncating could make it Inf.
		return uint16(b>>16) | 0x0040
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// F16ToFloat32 converts an IEEE 754 half-precision value, given by its bits,
// to float32. The conversion is exact, subnormals, infinities and NaN
// payloads included.
func F16ToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch exp {
	case 0:
		if mant == 0 {
			return math.Float32frombits(sign)
		}
		// Subnormal: mant·2⁻²⁴. Shift the leading one into the implicit
		// bit position; each shift halves the exponent.
		e := uint32(127 - 14)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
	case 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	default:
		return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
	}
}

// Float32ToF16 converts f to IEEE 754 half-precision bits, rounding to
// nearest, ties to even, with gradual underflow to subnormals. Values too
// large become infinities; NaNs stay NaNs (quiet, keeping the sign and the
// high payload bits).
func Float32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant != 0 {
			return sign | 0x7e00 | uint16(mant>>13)
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15 // biased half exponent
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		// Result is subnormal (or zero): value = M·2⁻²⁴ with
		// M = (1.mant)·2²³ >> (14-e).
		shift := uint(14 - e)
		if shift > 24 {
			return sign // below half the smallest subnormal
		}
		full := mant | 0x800000
		m := full >> shift
		rem := full & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || rem == half && m&1 == 1 {
			m++ // may carry into the smallest normal, which is right
		}
		return sign | uint16(m)
	}
	h := uint32(e)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || rem == 0x1000 && h&1 == 1 {
		h++ // may carry into the exponent, up to Inf, which is right
	}
	return sign | uint16(h)
}
