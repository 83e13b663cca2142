package gguf

import (
	"fmt"
	"os"
	"unsafe"
)

// Advice is a hint about how a tensor's bytes will be used.
type Advice int

const (
	// WillNeed asks the kernel to read the bytes in ahead of their use,
	// as an expert node does for the experts it is given.
	WillNeed Advice = iota
	// DontNeed lets the kernel drop the bytes from the process's memory,
	// as an expert node does for experts taken away from it; they are
	// read from the file again if used.
	DontNeed
)

// Advise passes hint a about t's bytes, a view of one of c's files (an
// expert's slice of a stacked tensor, say), to the kernel. On platforms
// without madvise it does nothing.
func (c *Checkpoint) Advise(t Tensor, a Advice) error {
	for _, f := range c.files {
		if ok, err := f.advise(t.Data, a); ok {
			return err
		}
	}
	return fmt.Errorf("%w: tensor %q is not a view of %v", ErrNotFound, t.Name, c.Paths())
}

// advise applies a to b, widened to whole pages, if b lies in f's
// mapping, and reports whether it does.
func (f *File) advise(b []byte, a Advice) (bool, error) {
	if len(b) == 0 {
		return false, nil
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed || len(f.data) == 0 {
		return false, nil
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(f.data)))
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	if p < base || p+uintptr(len(b)) > base+uintptr(len(f.data)) {
		return false, nil
	}
	page := uintptr(os.Getpagesize())
	lo := (p - base) / page * page
	hi := min(uintptr(len(f.data)), (p-base+uintptr(len(b))+page-1)/page*page)
	if err := madvise(f.data[lo:hi], a); err != nil {
		return true, fmt.Errorf("gguf: advise %s: %w", f.path, err)
	}
	return true, nil
}
