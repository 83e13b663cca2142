package kernel

import "github.com/moegrid/moegrid/model/safetensors"

// DType is the element type of a weight matrix as stored in the checkpoint;
// Matrix supports F32, BF16 and F16.
type DType = safetensors.DType

// The dtypes a Matrix may hold.
const (
	F32  = safetensors.F32
	BF16 = safetensors.BF16
	F16  = safetensors.F16
)
