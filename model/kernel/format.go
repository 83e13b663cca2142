package kernel

import (
	"fmt"
	"math"
	"unsafe"
)

// Format names the way a weight matrix is stored: a float type (F32, BF16,
// F16) or a block-quantized type. A matrix of any format knows its bytes and
// multiplies a batch of float32 rows; everything above the kernels (layers,
// experts, the expert node, placement sizes) goes through Matrix and never
// switches on the format. Adding a format means one file of this package
// that implements Matrix and one entry in formats.
type Format string

// The float formats.
const (
	F32  Format = "F32"
	BF16 Format = "BF16"
	F16  Format = "F16"
)

// Matrix is a read-only, row-major weight matrix [Rows, Cols] in one storage
// Format. Its data usually aliases a memory-mapped checkpoint. A Matrix is
// safe for concurrent use.
type Matrix interface {
	Rows() int
	Cols() int
	Format() Format
	// Bytes is the size of the stored data.
	Bytes() int64
	// Row writes row r, widened or dequantized exactly, into dst[:Cols].
	Row(dst []float32, r int)
	// MulRows: out[t·Rows + r] = Σ_c x[t·Cols + c] · W[r, c] for t < n and
	// lo ≤ r < hi. It writes no other element of out. Each element is
	// computed in a fixed order of operations that depends on Cols only,
	// never on n, lo or hi, which is what makes the kernels
	// batch-invariant. MatMul calls it concurrently on disjoint ranges.
	MulRows(out, x []float32, n, lo, hi int)
}

// formatSpec describes a Format: its block layout and its constructor.
type formatSpec struct {
	// blockSize is the number of values in a block; a row's length must be
	// a multiple of it.
	blockSize int
	// blockBytes is the size of one stored block.
	blockBytes int
	// new builds the matrix over data, whose length has been checked.
	new func(rows, cols int, data []byte) Matrix
}

// formats lists every supported Format.
var formats = map[Format]formatSpec{
	F32:  {blockSize: 1, blockBytes: 4, new: newF32Matrix},
	BF16: {blockSize: 1, blockBytes: 2, new: newBF16Matrix},
	F16:  {blockSize: 1, blockBytes: 2, new: newF16Matrix},
	Q8_0: q8_0.spec(),
	Q4_0: q4_0.spec(),
	Q4_K: q4_K.spec(),
	Q5_K: q5_K.spec(),
	Q6_K: q6_K.spec(),
}

// Formats lists the supported formats.
func Formats() []Format {
	out := make([]Format, 0, len(formats))
	for f := range formats {
		out = append(out, f)
	}
	return out
}

// Valid reports whether f is a supported format.
func (f Format) Valid() bool {
	_, ok := formats[f]
	return ok
}

// BlockSize is the number of values a block of f holds (1 for the float
// formats); a row's length must be a multiple of it.
func (f Format) BlockSize() int { return formats[f].blockSize }

// MatrixBytes is the size of a [rows, cols] matrix stored in f. It fails for
// an unknown format, a non-positive shape, a row length that is not a
// multiple of the block size, or a size that overflows.
func (f Format) MatrixBytes(rows, cols int) (int64, error) {
	spec, ok := formats[f]
	switch {
	case !ok:
		return 0, fmt.Errorf("kernel: unsupported format %q", f)
	case rows <= 0 || cols <= 0:
		return 0, fmt.Errorf("kernel: matrix shape [%d, %d] must be positive", rows, cols)
	case cols%spec.blockSize != 0:
		return 0, fmt.Errorf("kernel: %s rows of %d values are not a whole number of %d-value blocks", f, cols, spec.blockSize)
	}
	blocks := int64(cols / spec.blockSize)
	if int64(rows) > math.MaxInt64/(blocks*int64(spec.blockBytes)) {
		return 0, fmt.Errorf("kernel: %s matrix [%d, %d] overflows", f, rows, cols)
	}
	return int64(rows) * blocks * int64(spec.blockBytes), nil
}

// NewMatrix views data as a [rows, cols] matrix stored in format f, without
// copying when the data is suitably aligned. data must hold exactly the
// matrix's bytes.
func NewMatrix(f Format, rows, cols int, data []byte) (Matrix, error) {
	size, err := f.MatrixBytes(rows, cols)
	if err != nil {
		return nil, err
	}
	if int64(len(data)) != size {
		return nil, fmt.Errorf("kernel: %s matrix [%d, %d] needs %d bytes, got %d", f, rows, cols, size, len(data))
	}
	return formats[f].new(rows, cols, data), nil
}

// shape is the part every Matrix shares.
type shape struct{ rows, cols int }

func (s shape) Rows() int { return s.rows }
func (s shape) Cols() int { return s.cols }

// view reinterprets little-endian data as a slice of T in place when it is
// aligned for T, and as a copy otherwise. Only for the fixed-size numeric
// types of the formats, on little-endian hosts (every GOARCH the kernels
// build for).
func view[T uint16 | float32 | uint32](data []byte) []T {
	var zero T
	size := int(unsafe.Sizeof(zero))
	n := len(data) / size
	if n == 0 {
		return nil
	}
	p := unsafe.Pointer(unsafe.SliceData(data))
	if uintptr(p)%unsafe.Alignof(zero) == 0 {
		return unsafe.Slice((*T)(p), n)
	}
	out := make([]T, n)
	copy(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(out))), n*size), data)
	return out
}

// bytesOf is the inverse of view: the bytes of a numeric slice, in place.
func bytesOf[T uint16 | float32 | uint32](v []T) []byte {
	if len(v) == 0 {
		return nil
	}
	var zero T
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), len(v)*int(unsafe.Sizeof(zero)))
}

// FromFloat32 builds an F32 matrix over v, which it aliases.
func FromFloat32(rows, cols int, v []float32) (Matrix, error) {
	return NewMatrix(F32, rows, cols, bytesOf(v))
}

// FromHalf builds a BF16 or F16 matrix over the bits in v, which it aliases.
func FromHalf(f Format, rows, cols int, v []uint16) (Matrix, error) {
	if f != BF16 && f != F16 {
		return nil, fmt.Errorf("kernel: FromHalf of %q, want BF16 or F16", f)
	}
	return NewMatrix(f, rows, cols, bytesOf(v))
}
