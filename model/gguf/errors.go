package gguf

import "errors"

// Errors returned by this package. They are wrapped with details (the key,
// tensor or file concerned), so test for them with [errors.Is].
var (
	// ErrMagic reports a file that does not start with "GGUF".
	ErrMagic = errors.New("gguf: not a GGUF file")
	// ErrVersion reports an unsupported version: version 1, a future
	// version, or a big-endian file.
	ErrVersion = errors.New("gguf: unsupported version")
	// ErrTruncated reports a header that ends before its counts say it
	// should, or a count larger than the bytes left could hold.
	ErrTruncated = errors.New("gguf: truncated file")
	// ErrMetadata reports a malformed metadata entry: an unknown value
	// type, an invalid key, a duplicate key, or an array nested too deep.
	ErrMetadata = errors.New("gguf: invalid metadata")
	// ErrTensor reports a malformed tensor description: an unknown type,
	// too many dimensions, a shape that overflows or does not fit the
	// type's blocks, or a duplicate name.
	ErrTensor = errors.New("gguf: invalid tensor")
	// ErrBounds reports tensor data that is misaligned, lies outside the
	// data section, or overlaps another tensor.
	ErrBounds = errors.New("gguf: tensor data out of bounds")
	// ErrNotFound reports an absent tensor or metadata key.
	ErrNotFound = errors.New("gguf: not found")
	// ErrType reports a metadata value of another type than the one asked
	// for, or a tensor whose type an operation does not support.
	ErrType = errors.New("gguf: wrong type")
	// ErrSplit reports an inconsistent set of split files: a missing or
	// extra part, disagreeing counts, or a tensor in two parts.
	ErrSplit = errors.New("gguf: invalid split")
	// ErrClosed reports use of a File or Checkpoint after Close.
	ErrClosed = errors.New("gguf: use of closed file")
)
