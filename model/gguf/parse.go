package gguf

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"unicode/utf8"
)

// Magic is the first four bytes of every GGUF file.
const Magic = "GGUF"

// Version is the version this package writes; it reads 2 and 3, which
// share one encoding.
const Version = 3

// DefaultAlignment is the data alignment of a file without
// general.alignment.
const DefaultAlignment = 32

// KeyAlignment is the metadata key of the data alignment.
const KeyAlignment = "general.alignment"

// maxNameLen is the longest tensor name llama.cpp accepts (GGML_MAX_NAME
// less its terminating NUL).
const maxNameLen = 63

// maxDepth bounds arrays of arrays, so a hostile file cannot recurse the
// parser's stack away.
const maxDepth = 8

// Header is a parsed and validated GGUF header.
type Header struct {
	// Version is the file's version, 2 or 3.
	Version uint32
	// Metadata holds the key/value entries.
	Metadata *Metadata
	// Tensors describes the tensors in file order.
	Tensors []TensorInfo
	// Alignment is the alignment of the data section and of every
	// tensor's offset in it, in bytes.
	Alignment uint64
	// DataOffset is where the data section starts in the file, in bytes.
	DataOffset uint64
}

// TensorInfo describes one tensor.
type TensorInfo struct {
	Name string
	Type TensorType
	// Shape is in GGML order: Shape[0] is the contiguous dimension, so a
	// [rows, cols] matrix has Shape {cols, rows} and a stack of experts'
	// matrices {cols, rows, experts}.
	Shape []uint64
	// Offset is where the tensor's data starts in the data section.
	Offset uint64
	// Size is the stored size of the tensor's data, in bytes.
	Size uint64
}

// Elements is the number of values in the tensor.
func (t TensorInfo) Elements() uint64 {
	n := uint64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Parse reads and validates the header of a GGUF file whose bytes are
// data: the header must be complete, and every tensor must lie inside
// data's data section. Only the header is read; Parse keeps no reference
// to data.
func Parse(data []byte) (*Header, error) {
	r := &reader{buf: data}
	if len(data) < 4 || string(data[:4]) != Magic {
		return nil, fmt.Errorf("%w: magic %q, want %q", ErrMagic, data[:min(4, len(data))], Magic)
	}
	r.pos = 4
	version, err := r.u32("version")
	if err != nil {
		return nil, err
	}
	switch {
	case version == 2 || version == 3:
	case version&0xffff == 0 && (bits.ReverseBytes32(version) == 2 || bits.ReverseBytes32(version) == 3):
		return nil, fmt.Errorf("%w: big-endian file (version %d byte-swapped); only little-endian GGUF is supported", ErrVersion, bits.ReverseBytes32(version))
	default:
		return nil, fmt.Errorf("%w: version %d, want 2 or 3", ErrVersion, version)
	}
	h := &Header{Version: version}
	nTensors, err := r.u64("tensor count")
	if err != nil {
		return nil, err
	}
	nKV, err := r.u64("metadata count")
	if err != nil {
		return nil, err
	}
	// A metadata entry takes at least 13 bytes (a key's length and one
	// byte of it, a type and a one-byte value) and a tensor description at
	// least 33 (a name's length and one byte of it, a dimension count, one
	// dimension, a type and an offset): bound both counts by the bytes left
	// before allocating for them.
	if nKV > uint64(r.left())/13 {
		return nil, fmt.Errorf("%w: %d metadata entries cannot fit in the %d bytes left", ErrTruncated, nKV, r.left())
	}
	kvs := make([]KV, 0, nKV)
	for i := range nKV {
		kv, err := r.kv()
		if err != nil {
			return nil, fmt.Errorf("metadata entry %d: %w", i, err)
		}
		kvs = append(kvs, kv)
	}
	if h.Metadata, err = NewMetadata(kvs); err != nil {
		return nil, err
	}
	h.Alignment = DefaultAlignment
	if v, ok := h.Metadata.Lookup(KeyAlignment); ok {
		a, ok := v.v.(uint32)
		if !ok || a == 0 || a&(a-1) != 0 {
			return nil, fmt.Errorf("%w: %s = %v (%s), want a power of two as uint32", ErrMetadata, KeyAlignment, v, describe(v))
		}
		h.Alignment = uint64(a)
	}
	if nTensors > uint64(r.left())/33 {
		return nil, fmt.Errorf("%w: %d tensors cannot fit in the %d bytes left", ErrTruncated, nTensors, r.left())
	}
	h.Tensors = make([]TensorInfo, 0, nTensors)
	names := make(map[string]bool, nTensors)
	for i := range nTensors {
		t, err := r.tensorInfo()
		if err != nil {
			return nil, fmt.Errorf("tensor %d: %w", i, err)
		}
		if names[t.Name] {
			return nil, fmt.Errorf("%w: duplicate tensor %q", ErrTensor, t.Name)
		}
		names[t.Name] = true
		h.Tensors = append(h.Tensors, t)
	}
	h.DataOffset = alignUp(uint64(r.pos), h.Alignment)
	if err := checkData(h, uint64(len(data))); err != nil {
		return nil, err
	}
	return h, nil
}

// checkData checks that every tensor is aligned, lies in the data section
// of a file of size bytes, and overlaps no other.
func checkData(h *Header, size uint64) error {
	if len(h.Tensors) == 0 {
		return nil
	}
	if h.DataOffset > size {
		return fmt.Errorf("%w: data section starts at %d, past the end of the %d-byte file", ErrTruncated, h.DataOffset, size)
	}
	section := size - h.DataOffset
	for _, t := range h.Tensors {
		if t.Offset%h.Alignment != 0 {
			return fmt.Errorf("%w: tensor %q at offset %d is not %d-byte aligned", ErrBounds, t.Name, t.Offset, h.Alignment)
		}
		if t.Offset > section || t.Size > section-t.Offset {
			return fmt.Errorf("%w: tensor %q spans [%d, %d) of a %d-byte data section", ErrBounds, t.Name, t.Offset, t.Offset+t.Size, section)
		}
	}
	order := make([]int, len(h.Tensors))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(i, j int) int { return cmp.Compare(h.Tensors[i].Offset, h.Tensors[j].Offset) })
	for k := 1; k < len(order); k++ {
		a, b := h.Tensors[order[k-1]], h.Tensors[order[k]]
		if a.Offset+a.Size > b.Offset {
			return fmt.Errorf("%w: tensors %q [%d, %d) and %q [%d, %d) overlap", ErrBounds, a.Name, a.Offset, a.Offset+a.Size, b.Name, b.Offset, b.Offset+b.Size)
		}
	}
	return nil
}

func alignUp(n, a uint64) uint64 { return (n + a - 1) / a * a }

// reader decodes little-endian values from buf, failing with ErrTruncated
// at its end.
type reader struct {
	buf []byte
	pos int
}

func (r *reader) left() int { return len(r.buf) - r.pos }

func (r *reader) take(n int, what string) ([]byte, error) {
	if n > r.left() {
		return nil, fmt.Errorf("%w: %s needs %d bytes at offset %d, %d left", ErrTruncated, what, n, r.pos, r.left())
	}
	b := r.buf[r.pos : r.pos+n]
	r.pos += n
	return b, nil
}

func (r *reader) u32(what string) (uint32, error) {
	b, err := r.take(4, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (r *reader) u64(what string) (uint64, error) {
	b, err := r.take(8, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

func (r *reader) str(what string) (string, error) {
	n, err := r.u64(what + " length")
	if err != nil {
		return "", err
	}
	if n > uint64(r.left()) {
		return "", fmt.Errorf("%w: %s of %d bytes at offset %d, %d left", ErrTruncated, what, n, r.pos, r.left())
	}
	b, _ := r.take(int(n), what)
	return string(b), nil
}

func (r *reader) kv() (KV, error) {
	key, err := r.str("key")
	if err != nil {
		return KV{}, err
	}
	if key == "" || !utf8.ValidString(key) {
		return KV{}, fmt.Errorf("%w: key %q is empty or not UTF-8", ErrMetadata, key)
	}
	t, err := r.u32("value type")
	if err != nil {
		return KV{}, fmt.Errorf("key %q: %w", key, err)
	}
	v, err := r.value(ValueType(t), 0)
	if err != nil {
		return KV{}, fmt.Errorf("key %q: %w", key, err)
	}
	return KV{Key: key, Value: v}, nil
}

func (r *reader) value(t ValueType, depth int) (Value, error) {
	if t == TypeArray {
		a, err := r.array(depth)
		return Value{TypeArray, a}, err
	}
	if t == TypeString {
		s, err := r.str("string")
		return Value{TypeString, s}, err
	}
	if !t.Valid() {
		return Value{}, fmt.Errorf("%w: unknown value type %d", ErrMetadata, uint32(t))
	}
	b, err := r.take(t.size(), t.String())
	if err != nil {
		return Value{}, err
	}
	return Value{t, scalar(t, b)}, nil
}

// scalar decodes a scalar of type t from b, which holds exactly its bytes.
func scalar(t ValueType, b []byte) any {
	le := binary.LittleEndian
	switch t {
	case TypeUint8:
		return b[0]
	case TypeInt8:
		return int8(b[0])
	case TypeBool:
		return b[0] != 0
	case TypeUint16:
		return le.Uint16(b)
	case TypeInt16:
		return int16(le.Uint16(b))
	case TypeUint32:
		return le.Uint32(b)
	case TypeInt32:
		return int32(le.Uint32(b))
	case TypeFloat32:
		return math.Float32frombits(le.Uint32(b))
	case TypeUint64:
		return le.Uint64(b)
	case TypeInt64:
		return int64(le.Uint64(b))
	case TypeFloat64:
		return math.Float64frombits(le.Uint64(b))
	}
	panic("gguf: scalar of non-scalar type " + t.String())
}

func (r *reader) array(depth int) (Array, error) {
	if depth >= maxDepth {
		return Array{}, fmt.Errorf("%w: arrays nested deeper than %d", ErrMetadata, maxDepth)
	}
	et, err := r.u32("array type")
	if err != nil {
		return Array{}, err
	}
	elem := ValueType(et)
	if !elem.Valid() {
		return Array{}, fmt.Errorf("%w: unknown array element type %d", ErrMetadata, et)
	}
	n, err := r.u64("array length")
	if err != nil {
		return Array{}, err
	}
	if n > uint64(r.left()/elem.size()) {
		return Array{}, fmt.Errorf("%w: array of %d %s cannot fit in the %d bytes left", ErrTruncated, n, elem, r.left())
	}
	a := Array{Elem: elem}
	switch elem {
	case TypeString:
		s := make([]string, n)
		for i := range s {
			if s[i], err = r.str("string"); err != nil {
				return Array{}, fmt.Errorf("element %d: %w", i, err)
			}
		}
		a.Values = s
	case TypeArray:
		s := make([]Array, n)
		for i := range s {
			if s[i], err = r.array(depth + 1); err != nil {
				return Array{}, fmt.Errorf("element %d: %w", i, err)
			}
		}
		a.Values = s
	default:
		b, _ := r.take(int(n)*elem.size(), "array")
		a.Values = scalars(elem, b)
	}
	return a, nil
}

// scalars decodes a packed array of scalars of type t.
func scalars(t ValueType, b []byte) any {
	n := len(b) / t.size()
	switch t {
	case TypeUint8:
		return fill[uint8](t, b, n)
	case TypeInt8:
		return fill[int8](t, b, n)
	case TypeBool:
		return fill[bool](t, b, n)
	case TypeUint16:
		return fill[uint16](t, b, n)
	case TypeInt16:
		return fill[int16](t, b, n)
	case TypeUint32:
		return fill[uint32](t, b, n)
	case TypeInt32:
		return fill[int32](t, b, n)
	case TypeFloat32:
		return fill[float32](t, b, n)
	case TypeUint64:
		return fill[uint64](t, b, n)
	case TypeInt64:
		return fill[int64](t, b, n)
	case TypeFloat64:
		return fill[float64](t, b, n)
	}
	panic("gguf: scalars of non-scalar type " + t.String())
}

func fill[T any](t ValueType, b []byte, n int) []T {
	out := make([]T, n)
	size := t.size()
	for i := range out {
		out[i] = scalar(t, b[i*size:(i+1)*size]).(T)
	}
	return out
}

func (r *reader) tensorInfo() (TensorInfo, error) {
	name, err := r.str("tensor name")
	if err != nil {
		return TensorInfo{}, err
	}
	if name == "" || len(name) > maxNameLen || !utf8.ValidString(name) {
		return TensorInfo{}, fmt.Errorf("%w: name %q must be 1 to %d bytes of UTF-8", ErrTensor, name, maxNameLen)
	}
	nd, err := r.u32("dimension count")
	if err != nil {
		return TensorInfo{}, fmt.Errorf("tensor %q: %w", name, err)
	}
	if nd == 0 || nd > maxDims {
		return TensorInfo{}, fmt.Errorf("%w: tensor %q has %d dimensions, want 1 to %d", ErrTensor, name, nd, maxDims)
	}
	t := TensorInfo{Name: name, Shape: make([]uint64, nd)}
	for i := range t.Shape {
		if t.Shape[i], err = r.u64("dimension"); err != nil {
			return TensorInfo{}, fmt.Errorf("tensor %q: %w", name, err)
		}
	}
	typ, err := r.u32("tensor type")
	if err != nil {
		return TensorInfo{}, fmt.Errorf("tensor %q: %w", name, err)
	}
	t.Type = TensorType(typ)
	if t.Offset, err = r.u64("tensor offset"); err != nil {
		return TensorInfo{}, fmt.Errorf("tensor %q: %w", name, err)
	}
	if t.Size, err = tensorBytes(t.Type, t.Shape); err != nil {
		return TensorInfo{}, fmt.Errorf("tensor %q: %w", name, err)
	}
	return t, nil
}
