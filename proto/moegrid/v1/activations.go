package moegridv1

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/moegrid/moegrid/model/safetensors"
)

// ErrPayload is wrapped by every error about an activation payload that
// does not match its declared shape or dtype.
var ErrPayload = errors.New("moegrid.v1: bad activation payload")

// ElementSize is the number of bytes of one element of d, or 0 for an
// unknown or unspecified dtype.
func ElementSize(d DType) int {
	switch d {
	case DType_DTYPE_F32:
		return 4
	case DType_DTYPE_BF16:
		return 2
	}
	return 0
}

// AppendActivations appends x in the wire form of dtype (raw little-endian
// elements) to dst. BF16 rounds to nearest even.
func AppendActivations(dst []byte, x []float32, dtype DType) ([]byte, error) {
	switch dtype {
	case DType_DTYPE_F32:
		for _, v := range x {
			dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(v))
		}
	case DType_DTYPE_BF16:
		for _, v := range x {
			dst = binary.LittleEndian.AppendUint16(dst, safetensors.Float32ToBF16(v))
		}
	default:
		return nil, fmt.Errorf("%w: dtype %v", ErrPayload, dtype)
	}
	return dst, nil
}

// DecodeActivations decodes exactly rows·dim elements of dtype from data
// into dst, which must have room for them.
func DecodeActivations(dst []float32, data []byte, rows, dim int, dtype DType) error {
	size := ElementSize(dtype)
	if size == 0 {
		return fmt.Errorf("%w: dtype %v", ErrPayload, dtype)
	}
	n := rows * dim
	if rows < 0 || dim < 0 || (dim != 0 && n/dim != rows) || len(data) != n*size {
		return fmt.Errorf("%w: %d bytes for %d rows of %d %v elements, want %d", ErrPayload, len(data), rows, dim, dtype, n*size)
	}
	if len(dst) < n {
		return fmt.Errorf("%w: destination holds %d elements, need %d", ErrPayload, len(dst), n)
	}
	switch dtype {
	case DType_DTYPE_F32:
		for i := range n {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
		}
	case DType_DTYPE_BF16:
		for i := range n {
			dst[i] = safetensors.BF16ToFloat32(binary.LittleEndian.Uint16(data[2*i:]))
		}
	}
	return nil
}
