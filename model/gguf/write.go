package gguf

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
)

// Writer writes a GGUF version 3 file: NewWriter writes the header, then
// WriteTensor writes each tensor's data in the order the header lists
// them, so a converter holds only one tensor in memory at a time. A Writer
// is not safe for concurrent use.
type Writer struct {
	w         *bufio.Writer
	tensors   []TensorInfo
	alignment uint64
	next      int   // the tensor WriteTensor expects
	err       error // the first write error; every later call returns it
}

// NewWriter writes the header of a file holding meta and the tensors
// described by tensors (their Offset and Size are computed, whatever they
// hold) to w. The data alignment is meta's general.alignment, a uint32
// power of two, or DefaultAlignment.
func NewWriter(w io.Writer, meta []KV, tensors []TensorInfo) (*Writer, error) {
	md, err := NewMetadata(meta)
	if err != nil {
		return nil, err
	}
	gw := &Writer{w: bufio.NewWriterSize(w, 1<<20), alignment: DefaultAlignment}
	if v, ok := md.Lookup(KeyAlignment); ok {
		a, ok := v.v.(uint32)
		if !ok || a == 0 || a&(a-1) != 0 {
			return nil, fmt.Errorf("%w: %s = %v (%s), want a power of two as uint32", ErrMetadata, KeyAlignment, v, describe(v))
		}
		gw.alignment = uint64(a)
	}
	names := make(map[string]bool, len(tensors))
	var offset uint64
	for _, t := range tensors {
		if t.Name == "" || len(t.Name) > maxNameLen {
			return nil, fmt.Errorf("%w: name %q must be 1 to %d bytes", ErrTensor, t.Name, maxNameLen)
		}
		if names[t.Name] {
			return nil, fmt.Errorf("%w: duplicate tensor %q", ErrTensor, t.Name)
		}
		names[t.Name] = true
		size, err := tensorBytes(t.Type, t.Shape)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		t.Shape = append([]uint64(nil), t.Shape...)
		t.Offset, t.Size = offset, size
		offset = alignUp(offset+size, gw.alignment)
		gw.tensors = append(gw.tensors, t)
	}

	var b []byte
	b = append(b, Magic...)
	b = binary.LittleEndian.AppendUint32(b, Version)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(tensors)))
	b = binary.LittleEndian.AppendUint64(b, uint64(len(meta)))
	for _, kv := range meta {
		b = appendString(b, kv.Key)
		b = binary.LittleEndian.AppendUint32(b, uint32(kv.Value.typ))
		if b, err = appendValue(b, kv.Value.typ, kv.Value.v); err != nil {
			return nil, fmt.Errorf("key %q: %w", kv.Key, err)
		}
	}
	for _, t := range gw.tensors {
		b = appendString(b, t.Name)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(t.Shape)))
		for _, d := range t.Shape {
			b = binary.LittleEndian.AppendUint64(b, d)
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(t.Type))
		b = binary.LittleEndian.AppendUint64(b, t.Offset)
	}
	b = append(b, make([]byte, alignUp(uint64(len(b)), gw.alignment)-uint64(len(b)))...)
	if _, err := gw.w.Write(b); err != nil {
		return nil, fmt.Errorf("gguf: write header: %w", err)
	}
	return gw, nil
}

// Tensors returns the tensors the file will hold, with their offsets.
func (w *Writer) Tensors() []TensorInfo { return append([]TensorInfo(nil), w.tensors...) }

// WriteTensor writes the data of the tensor named name, which must be the
// next one in header order, as the concatenation of parts (the experts of a
// stacked tensor, say), whose lengths must add up to its size.
func (w *Writer) WriteTensor(name string, parts ...[]byte) error {
	if w.err != nil {
		return w.err
	}
	if w.next >= len(w.tensors) {
		return fmt.Errorf("%w: tensor %q written after the last one", ErrTensor, name)
	}
	t := w.tensors[w.next]
	if name != t.Name {
		return fmt.Errorf("%w: tensor %q written where %q comes next", ErrTensor, name, t.Name)
	}
	var n uint64
	for _, p := range parts {
		n += uint64(len(p))
	}
	if n != t.Size {
		return fmt.Errorf("%w: tensor %q of %s %v needs %d bytes, got %d", ErrTensor, name, t.Type, t.Shape, t.Size, n)
	}
	for _, p := range parts {
		if _, err := w.w.Write(p); err != nil {
			w.err = fmt.Errorf("gguf: write tensor %q: %w", name, err)
			return w.err
		}
	}
	// Every tensor is padded, the last included, as llama.cpp writes them.
	pad := alignUp(t.Offset+t.Size, w.alignment) - (t.Offset + t.Size)
	if _, err := w.w.Write(make([]byte, pad)); err != nil {
		w.err = fmt.Errorf("gguf: write tensor %q: %w", name, err)
		return w.err
	}
	w.next++
	return nil
}

// Close checks that every tensor was written and flushes the file. It does
// not close the underlying writer.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.next != len(w.tensors) {
		return fmt.Errorf("%w: %d of %d tensors written; %q is missing", ErrTensor, w.next, len(w.tensors), w.tensors[w.next].Name)
	}
	if err := w.w.Flush(); err != nil {
		w.err = fmt.Errorf("gguf: write: %w", err)
		return w.err
	}
	return nil
}

// WriteFile writes meta and tensors (each with its Name, Type, Shape and
// Data) to a new GGUF file at path, by way of a temporary file in the same
// directory renamed into place, so a reader never sees half a file.
func WriteFile(path string, meta []KV, tensors []Tensor) (err error) {
	infos := make([]TensorInfo, len(tensors))
	for i, t := range tensors {
		infos[i] = t.TensorInfo
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("gguf: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	w, err := NewWriter(tmp, meta, infos)
	if err != nil {
		return err
	}
	for _, t := range tensors {
		if err := w.WriteTensor(t.Name, t.Data); err != nil {
			return err
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("gguf: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("gguf: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("gguf: %w", err)
	}
	return nil
}

func appendString(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
	return append(b, s...)
}

// appendValue encodes v, of type t, without its type tag.
func appendValue(b []byte, t ValueType, v any) ([]byte, error) {
	le := binary.LittleEndian
	switch x := v.(type) {
	case uint8:
		return append(b, x), nil
	case int8:
		return append(b, byte(x)), nil
	case bool:
		if x {
			return append(b, 1), nil
		}
		return append(b, 0), nil
	case uint16:
		return le.AppendUint16(b, x), nil
	case int16:
		return le.AppendUint16(b, uint16(x)), nil
	case uint32:
		return le.AppendUint32(b, x), nil
	case int32:
		return le.AppendUint32(b, uint32(x)), nil
	case float32:
		return le.AppendUint32(b, math.Float32bits(x)), nil
	case uint64:
		return le.AppendUint64(b, x), nil
	case int64:
		return le.AppendUint64(b, uint64(x)), nil
	case float64:
		return le.AppendUint64(b, math.Float64bits(x)), nil
	case string:
		return appendString(b, x), nil
	case Array:
		return appendArray(b, x)
	}
	return nil, fmt.Errorf("%w: cannot encode %T as %s", ErrMetadata, v, t)
}

func appendArray(b []byte, a Array) ([]byte, error) {
	b = binary.LittleEndian.AppendUint32(b, uint32(a.Elem))
	b = binary.LittleEndian.AppendUint64(b, uint64(a.Len()))
	var err error
	each := func(n int, at func(int) any) {
		for i := 0; i < n && err == nil; i++ {
			b, err = appendValue(b, a.Elem, at(i))
		}
	}
	switch s := a.Values.(type) {
	case []uint8:
		each(len(s), func(i int) any { return s[i] })
	case []int8:
		each(len(s), func(i int) any { return s[i] })
	case []uint16:
		each(len(s), func(i int) any { return s[i] })
	case []int16:
		each(len(s), func(i int) any { return s[i] })
	case []uint32:
		each(len(s), func(i int) any { return s[i] })
	case []int32:
		each(len(s), func(i int) any { return s[i] })
	case []float32:
		each(len(s), func(i int) any { return s[i] })
	case []bool:
		each(len(s), func(i int) any { return s[i] })
	case []string:
		each(len(s), func(i int) any { return s[i] })
	case []Array:
		each(len(s), func(i int) any { return s[i] })
	case []uint64:
		each(len(s), func(i int) any { return s[i] })
	case []int64:
		each(len(s), func(i int) any { return s[i] })
	case []float64:
		each(len(s), func(i int) any { return s[i] })
	default:
		return nil, fmt.Errorf("%w: cannot encode an array of %T", ErrMetadata, a.Values)
	}
	return b, err
}
