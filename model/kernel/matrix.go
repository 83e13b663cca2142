package kernel

import (
	"fmt"

	"github.com/moegrid/moegrid/model/safetensors"
)

// Matrix is a row-major weight matrix [Rows, Cols] in its stored dtype. Its
// data usually aliases a memory-mapped checkpoint and is never written.
// Exactly one of F32 and Half is set; Half holds BF16 or F16 bits as DType
// says.
type Matrix struct {
	Rows, Cols int
	DType      DType
	F32        []float32
	Half       []uint16
}

// NewMatrix checks that the data holds exactly rows*cols elements of dtype.
func NewMatrix(rows, cols int, dtype DType, f32 []float32, half []uint16) (Matrix, error) {
	m := Matrix{Rows: rows, Cols: cols, DType: dtype, F32: f32, Half: half}
	n := rows * cols
	switch {
	case rows <= 0 || cols <= 0:
		return Matrix{}, fmt.Errorf("kernel: matrix shape [%d, %d] must be positive", rows, cols)
	case dtype == F32 && len(f32) != n:
		return Matrix{}, fmt.Errorf("kernel: F32 matrix [%d, %d] has %d elements, want %d", rows, cols, len(f32), n)
	case (dtype == BF16 || dtype == F16) && len(half) != n:
		return Matrix{}, fmt.Errorf("kernel: %v matrix [%d, %d] has %d elements, want %d", dtype, rows, cols, len(half), n)
	case dtype != F32 && dtype != BF16 && dtype != F16:
		return Matrix{}, fmt.Errorf("kernel: unsupported dtype %v", dtype)
	}
	return m, nil
}

// Bytes is the size of the matrix in its stored dtype.
func (m *Matrix) Bytes() int64 { return int64(m.Rows) * int64(m.Cols) * int64(m.DType.Size()) }

// Row widens row r into dst[Cols] exactly.
func (m *Matrix) Row(dst []float32, r int) {
	off := r * m.Cols
	switch m.DType {
	case F32:
		copy(dst[:m.Cols], m.F32[off:off+m.Cols])
	case BF16:
		src := m.Half[off : off+m.Cols]
		for i, b := range src {
			dst[i] = safetensors.BF16ToFloat32(b)
		}
	case F16:
		src := m.Half[off : off+m.Cols]
		for i, b := range src {
			dst[i] = safetensors.F16ToFloat32(b)
		}
	}
}
