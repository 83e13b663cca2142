package safetensors

import "errors"

// Errors returned by this package. They are wrapped with details (the tensor
// or file concerned), so test for them with [errors.Is].
var (
	// ErrHeader reports a malformed file header: a bad length prefix,
	// invalid JSON, or missing, duplicate or unknown fields.
	ErrHeader = errors.New("safetensors: invalid header")
	// ErrDType reports an unknown dtype name, or an operation that the
	// tensor's dtype does not support.
	ErrDType = errors.New("safetensors: unsupported dtype")
	// ErrShape reports a negative or overflowing shape, or a data size
	// that does not match the shape and dtype.
	ErrShape = errors.New("safetensors: invalid shape")
	// ErrBounds reports data offsets that are reversed or lie outside the
	// file's data section.
	ErrBounds = errors.New("safetensors: data offsets out of bounds")
	// ErrOverlap reports two tensors whose data share bytes.
	ErrOverlap = errors.New("safetensors: overlapping tensors")
	// ErrNotFound reports a tensor that is absent, or that was not
	// selected when the checkpoint was opened.
	ErrNotFound = errors.New("safetensors: tensor not found")
	// ErrDuplicate reports a tensor name given twice: twice in one header,
	// index or write request, or in two shard files.
	ErrDuplicate = errors.New("safetensors: duplicate tensor")
	// ErrIndex reports a malformed model.safetensors.index.json.
	ErrIndex = errors.New("safetensors: invalid index")
	// ErrNoCheckpoint reports a directory with neither model.safetensors
	// nor model.safetensors.index.json.
	ErrNoCheckpoint = errors.New("safetensors: no checkpoint found")
	// ErrClosed reports use of a File or Checkpoint after Close.
	ErrClosed = errors.New("safetensors: use of closed file")
)
