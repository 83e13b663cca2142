package safetensors

import (
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/moegrid/moegrid/model/internal/mapped"
)

// File is an open safetensors file, mapped into memory. Its methods are safe
// for concurrent use.
type File struct {
	path   string
	header Header

	// mu protects data and unmap: Close takes it exclusively, so that no
	// Tensor call hands out a slice of a mapping being removed.
	mu     sync.RWMutex
	data   []byte // the whole file; nil once closed
	unmap  func() error
	closed bool
}

// OpenFile opens and maps the safetensors file at path and validates its
// header with [ParseHeader]. The mapping is read-only and shared: the file
// must not be truncated or rewritten in place while it is open (replacing it
// by rename, as [WriteFile] does, is safe).
func OpenFile(path string) (*File, error) {
	data, unmap, err := mapped.Open(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	h, err := ParseHeader(data, int64(len(data)))
	if err != nil {
		unmap()
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return &File{path: path, header: h, data: data, unmap: unmap}, nil
}

// Path returns the path the file was opened with.
func (f *File) Path() string { return f.path }

// Names returns the names of the file's tensors, sorted.
func (f *File) Names() []string {
	names := make([]string, len(f.header.Tensors))
	for i, t := range f.header.Tensors {
		names[i] = t.Name
	}
	return names
}

// Metadata returns a copy of the file's "__metadata__" entries; nil if it
// has none.
func (f *File) Metadata() map[string]string { return maps.Clone(f.header.Metadata) }

// Info returns the header entry of the tensor named name.
func (f *File) Info(name string) (TensorInfo, bool) {
	ti, ok := f.header.Lookup(name)
	ti.Shape = slices.Clone(ti.Shape)
	return ti, ok
}

// Tensor returns the tensor named name. Its Data aliases the mapping, see
// [Tensor]. It returns an error wrapping [ErrNotFound] if there is no such
// tensor and [ErrClosed] after Close.
func (f *File) Tensor(name string) (Tensor, error) {
	ti, ok := f.header.Lookup(name)
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return Tensor{}, fmt.Errorf("%w: %s", ErrClosed, f.path)
	}
	if !ok {
		return Tensor{}, fmt.Errorf("%w: %q in %s", ErrNotFound, name, f.path)
	}
	b := f.header.DataOffset + ti.Begin
	e := f.header.DataOffset + ti.End
	return Tensor{
		Name:  ti.Name,
		DType: ti.DType,
		Shape: slices.Clone(ti.Shape),
		Data:  f.data[b:e:e], // capped: append must not write into a neighbour
	}, nil
}

// Close unmaps the file. Tensor data obtained from it must not be used
// afterwards. Closing a closed File does nothing.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	f.data = nil
	if err := f.unmap(); err != nil {
		return fmt.Errorf("safetensors: unmap %s: %w", f.path, err)
	}
	return nil
}
