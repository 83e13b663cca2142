package gguf

import (
	"fmt"
	"math"
	"sync"

	"github.com/moegrid/moegrid/model/internal/mapped"
	"github.com/moegrid/moegrid/model/kernel"
)

// File is an open GGUF file, mapped into memory. Its methods are safe for
// concurrent use.
type File struct {
	path   string
	header *Header
	index  map[string]int

	// mu protects data and closed: Close takes it exclusively, so that no
	// Tensor call hands out a slice of a mapping being removed.
	mu     sync.RWMutex
	data   []byte // the whole file; nil once closed
	unmap  func() error
	closed bool
}

// OpenFile opens and maps the GGUF file at path and validates its header
// with [Parse]. The mapping is read-only and shared: the file must not be
// truncated or rewritten in place while it is open (replacing it by
// rename, as [WriteFile] does, is safe).
func OpenFile(path string) (*File, error) {
	data, unmap, err := mapped.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	h, err := Parse(data)
	if err != nil {
		unmap()
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	f := &File{path: path, header: h, data: data, unmap: unmap, index: make(map[string]int, len(h.Tensors))}
	for i, t := range h.Tensors {
		f.index[t.Name] = i
	}
	return f, nil
}

// Path returns the path the file was opened with.
func (f *File) Path() string { return f.path }

// Header returns the file's validated header. It must not be modified.
func (f *File) Header() *Header { return f.header }

// Metadata returns the file's metadata.
func (f *File) Metadata() *Metadata { return f.header.Metadata }

// Info returns the description of the tensor named name.
func (f *File) Info(name string) (TensorInfo, error) {
	i, ok := f.index[name]
	if !ok {
		return TensorInfo{}, fmt.Errorf("%w: tensor %q in %s", ErrNotFound, name, f.path)
	}
	return f.header.Tensors[i], nil
}

// Tensor returns the tensor named name, its data a view of the mapping that
// stays valid until Close.
func (f *File) Tensor(name string) (Tensor, error) {
	info, err := f.Info(name)
	if err != nil {
		return Tensor{}, err
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return Tensor{}, fmt.Errorf("%w: %s", ErrClosed, f.path)
	}
	start := f.header.DataOffset + info.Offset
	return Tensor{TensorInfo: info, Data: f.data[start : start+info.Size : start+info.Size]}, nil
}

// Close removes the mapping; tensor data handed out before must no longer
// be used. Close is idempotent.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	f.data = nil
	if err := f.unmap(); err != nil {
		return fmt.Errorf("gguf: unmap %s: %w", f.path, err)
	}
	return nil
}

// Tensor is a tensor's description and its stored bytes.
type Tensor struct {
	TensorInfo
	// Data is the tensor's bytes, exactly Size of them; for an opened
	// file, a read-only view of its mapping.
	Data []byte
}

// Slice returns the i-th slice of t along its last dimension: for a stack
// of experts' matrices {cols, rows, experts}, expert i's {cols, rows}
// matrix. Its data is the slice's byte range of t's.
func (t Tensor) Slice(i int) (Tensor, error) {
	nd := len(t.Shape)
	if nd < 2 {
		return Tensor{}, fmt.Errorf("%w: cannot slice %d-dimensional tensor %q", ErrTensor, nd, t.Name)
	}
	n := t.Shape[nd-1]
	if i < 0 || uint64(i) >= n {
		return Tensor{}, fmt.Errorf("%w: slice %d of tensor %q, which has %d", ErrNotFound, i, t.Name, n)
	}
	size := t.Size / n
	s := Tensor{
		TensorInfo: TensorInfo{
			Name:   fmt.Sprintf("%s[%d]", t.Name, i),
			Type:   t.Type,
			Shape:  t.Shape[: nd-1 : nd-1],
			Offset: t.Offset + uint64(i)*size,
			Size:   size,
		},
	}
	if t.Data != nil {
		lo := uint64(i) * size
		s.Data = t.Data[lo : lo+size : lo+size]
	}
	return s, nil
}

// Format is the kernel format of t's type; it fails for a type moegrid's
// kernels do not run.
func (t Tensor) Format() (kernel.Format, error) {
	f := kernel.Format(t.Type.String())
	if !f.Valid() {
		return "", fmt.Errorf("%w: tensor %q is %s, which the kernels do not support", ErrType, t.Name, t.Type)
	}
	return f, nil
}

// Matrix views a two-dimensional tensor {cols, rows} as a [rows, cols]
// kernel matrix over its data, without copying when the data is aligned.
func (t Tensor) Matrix() (kernel.Matrix, error) {
	if len(t.Shape) != 2 {
		return nil, fmt.Errorf("%w: tensor %q of shape %v is not a matrix", ErrTensor, t.Name, t.Shape)
	}
	f, err := t.Format()
	if err != nil {
		return nil, err
	}
	if t.Shape[0] > math.MaxInt32 || t.Shape[1] > math.MaxInt32 {
		return nil, fmt.Errorf("%w: tensor %q of shape %v is too large for a matrix", ErrTensor, t.Name, t.Shape)
	}
	m, err := kernel.NewMatrix(f, int(t.Shape[1]), int(t.Shape[0]), t.Data)
	if err != nil {
		return nil, fmt.Errorf("gguf: tensor %q: %w", t.Name, err)
	}
	return m, nil
}
