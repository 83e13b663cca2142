package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxHeaderSize is the largest JSON header, in bytes, that [ParseHeader]
// accepts and [Write] produces. It is the reference implementation's limit.
const MaxHeaderSize = 100_000_000

// metadataKey is the header entry that holds the file's string metadata.
const metadataKey = "__metadata__"

// TensorInfo describes one tensor of a header.
type TensorInfo struct {
	Name  string
	DType DType
	// Shape holds the dimensions, outermost first; empty for a scalar.
	Shape []int
	// Begin and End are the tensor's byte range, relative to the start of
	// the data section (Header.DataOffset).
	Begin, End int64
}

// Size returns the size of the tensor's data in bytes.
func (ti TensorInfo) Size() int64 { return ti.End - ti.Begin }

// Header is the parsed and validated header of a safetensors file.
type Header struct {
	// Metadata holds the "__metadata__" entries; nil if there were none.
	Metadata map[string]string
	// Tensors describes every tensor, sorted by name.
	Tensors []TensorInfo
	// DataOffset is the file offset of the data section: 8 + header length.
	DataOffset int64
	// DataSize is the size of the data section in bytes: the file size
	// less DataOffset. Every tensor lies within it.
	DataSize int64
}

// Lookup returns the tensor named name.
func (h *Header) Lookup(name string) (TensorInfo, bool) {
	i, ok := slices.BinarySearchFunc(h.Tensors, name, func(ti TensorInfo, name string) int {
		return strings.Compare(ti.Name, name)
	})
	if !ok {
		return TensorInfo{}, false
	}
	return h.Tensors[i], true
}

// ParseHeader parses and validates the header of a safetensors file.
// data holds the start of the file: the 8-byte length prefix N followed by
// at least the N header bytes (the whole file will do; bytes after the
// header are not read). fileSize is the size of the whole file, which bounds
// the tensors' data.
//
// ParseHeader checks everything that later access relies on: the header
// length against the file and [MaxHeaderSize]; that the header is UTF-8 JSON
// of the expected form, without duplicate keys or unknown fields; that every
// dtype is supported, every shape non-negative and its byte size
// representable; that every tensor's data_offsets [begin, end] satisfy
// begin <= end <= data size and end-begin equals the shape's byte size; and
// that no two tensors share a byte. Gaps between tensors are allowed.
// The errors wrap [ErrHeader], [ErrDType], [ErrShape], [ErrBounds],
// [ErrOverlap] or [ErrDuplicate], and name the tensor concerned.
func ParseHeader(data []byte, fileSize int64) (Header, error) {
	if fileSize < 8 {
		return Header{}, fmt.Errorf("%w: file of %d bytes is too short for the 8-byte header length", ErrHeader, fileSize)
	}
	if int64(len(data)) > fileSize {
		return Header{}, fmt.Errorf("%w: %d bytes given for a file of %d bytes", ErrHeader, len(data), fileSize)
	}
	if len(data) < 8 {
		return Header{}, fmt.Errorf("%w: %d bytes given, need the 8-byte header length", ErrHeader, len(data))
	}
	n := binary.LittleEndian.Uint64(data)
	if n > MaxHeaderSize {
		return Header{}, fmt.Errorf("%w: header length %d exceeds the limit of %d bytes", ErrHeader, n, MaxHeaderSize)
	}
	if n > uint64(fileSize-8) {
		return Header{}, fmt.Errorf("%w: header length %d exceeds the file size %d", ErrHeader, n, fileSize)
	}
	if n > uint64(len(data)-8) {
		return Header{}, fmt.Errorf("%w: header length %d, but only %d header bytes given", ErrHeader, n, len(data)-8)
	}
	h := Header{DataOffset: 8 + int64(n), DataSize: fileSize - 8 - int64(n)}
	js := data[8 : 8+n]
	if !utf8.Valid(js) {
		return Header{}, fmt.Errorf("%w: header is not valid UTF-8", ErrHeader)
	}
	members, err := decodeObject(js)
	if err != nil {
		return Header{}, fmt.Errorf("%w: %w", ErrHeader, err)
	}
	h.Tensors = make([]TensorInfo, 0, len(members))
	for _, m := range members {
		if m.key == metadataKey {
			md, err := parseStringMap(m.value)
			if err != nil {
				return Header{}, fmt.Errorf("%w: %s: %w", ErrHeader, metadataKey, err)
			}
			h.Metadata = md
			continue
		}
		ti, err := parseTensorInfo(m.key, m.value, h.DataSize)
		if err != nil {
			return Header{}, err
		}
		h.Tensors = append(h.Tensors, ti)
	}
	if err := checkOverlap(h.Tensors); err != nil {
		return Header{}, err
	}
	slices.SortFunc(h.Tensors, func(a, b TensorInfo) int { return strings.Compare(a.Name, b.Name) })
	return h, nil
}

// parseTensorInfo parses and checks the header entry of tensor name against
// a data section of dataSize bytes.
func parseTensorInfo(name string, raw json.RawMessage, dataSize int64) (TensorInfo, error) {
	fields, err := decodeObject(raw)
	if err != nil {
		return TensorInfo{}, fmt.Errorf("%w: tensor %q: %w", ErrHeader, name, err)
	}
	ti := TensorInfo{Name: name}
	var haveDType, haveShape, haveOffsets bool
	var offsets []uint64
	for _, f := range fields {
		switch f.key {
		case "dtype":
			s, err := decodeString(f.value)
			if err != nil {
				return TensorInfo{}, fmt.Errorf("%w: tensor %q: dtype: %w", ErrHeader, name, err)
			}
			if ti.DType = DType(s); !ti.DType.Valid() {
				return TensorInfo{}, fmt.Errorf("%w: tensor %q: dtype %q", ErrDType, name, s)
			}
			haveDType = true
		case "shape":
			dims, err := decodeUints(f.value)
			if err != nil {
				return TensorInfo{}, fmt.Errorf("%w: tensor %q: shape: %w", errKind(err, ErrShape), name, err)
			}
			ti.Shape = make([]int, len(dims))
			for i, d := range dims {
				if d > math.MaxInt {
					return TensorInfo{}, fmt.Errorf("%w: tensor %q: dimension %d is too large", ErrShape, name, d)
				}
				ti.Shape[i] = int(d)
			}
			haveShape = true
		case "data_offsets":
			if offsets, err = decodeUints(f.value); err != nil {
				return TensorInfo{}, fmt.Errorf("%w: tensor %q: data_offsets: %w", errKind(err, ErrBounds), name, err)
			}
			if len(offsets) != 2 {
				return TensorInfo{}, fmt.Errorf("%w: tensor %q: data_offsets has %d elements, want 2", ErrHeader, name, len(offsets))
			}
			haveOffsets = true
		default:
			return TensorInfo{}, fmt.Errorf("%w: tensor %q: unknown field %q", ErrHeader, name, f.key)
		}
	}
	switch {
	case !haveDType:
		return TensorInfo{}, fmt.Errorf("%w: tensor %q: missing dtype", ErrHeader, name)
	case !haveShape:
		return TensorInfo{}, fmt.Errorf("%w: tensor %q: missing shape", ErrHeader, name)
	case !haveOffsets:
		return TensorInfo{}, fmt.Errorf("%w: tensor %q: missing data_offsets", ErrHeader, name)
	}
	b, e := offsets[0], offsets[1]
	if b > e {
		return TensorInfo{}, fmt.Errorf("%w: tensor %q: data_offsets [%d, %d] are reversed", ErrBounds, name, b, e)
	}
	if e > uint64(dataSize) {
		return TensorInfo{}, fmt.Errorf("%w: tensor %q: data_offsets [%d, %d] exceed the data size %d", ErrBounds, name, b, e, dataSize)
	}
	ti.Begin, ti.End = int64(b), int64(e)
	size, ok := byteSize(ti.DType, ti.Shape)
	if !ok {
		return TensorInfo{}, fmt.Errorf("%w: tensor %q: shape %v of %s overflows", ErrShape, name, ti.Shape, ti.DType)
	}
	if size != ti.Size() {
		return TensorInfo{}, fmt.Errorf("%w: tensor %q: shape %v of %s needs %d bytes, data_offsets [%d, %d] hold %d",
			ErrShape, name, ti.Shape, ti.DType, size, b, e, ti.Size())
	}
	return ti, nil
}

// byteSize returns the data size of a tensor of dtype d and the given shape,
// and false if a dimension is negative or the size overflows an int. As in
// the reference implementation, an overflowing prefix is an error even when
// a later dimension is zero.
func byteSize(d DType, shape []int) (int64, bool) {
	n := uint64(1)
	for _, dim := range shape {
		if dim < 0 {
			return 0, false
		}
		hi, lo := bits.Mul64(n, uint64(dim))
		if hi != 0 || lo > math.MaxInt {
			return 0, false
		}
		n = lo
	}
	hi, lo := bits.Mul64(n, uint64(d.Size()))
	if hi != 0 || lo > math.MaxInt {
		return 0, false
	}
	return int64(lo), true
}

// checkOverlap reports an error if two tensors share a byte. Empty tensors
// occupy no bytes and overlap nothing.
func checkOverlap(tensors []TensorInfo) error {
	order := make([]int, 0, len(tensors))
	for i, t := range tensors {
		if t.Size() > 0 {
			order = append(order, i)
		}
	}
	sort.Slice(order, func(i, j int) bool {
		a, b := tensors[order[i]], tensors[order[j]]
		if a.Begin != b.Begin {
			return a.Begin < b.Begin
		}
		return a.End < b.End
	})
	// Sorted by begin, a tensor overlaps an earlier one exactly when it
	// begins before the furthest end seen so far.
	last := -1
	for _, i := range order {
		if last >= 0 && tensors[i].Begin < tensors[last].End {
			a, b := tensors[last], tensors[i]
			return fmt.Errorf("%w: %q [%d, %d] and %q [%d, %d]", ErrOverlap, a.Name, a.Begin, a.End, b.Name, b.Begin, b.End)
		}
		if last < 0 || tensors[i].End > tensors[last].End {
			last = i
		}
	}
	return nil
}

// member is one key/value pair of a JSON object.
type member struct {
	key   string
	value json.RawMessage
}

// errNegative marks a negative integer where a non-negative one is needed;
// errRange one too large for 64 bits. Both are range errors rather than
// malformed JSON, see errKind.
var (
	errNegative = errors.New("negative integer")
	errRange    = errors.New("integer out of range")
)

// errKind returns rangeErr for errors that say a well-formed number is out of
// range, and ErrHeader for malformed input.
func errKind(err, rangeErr error) error {
	if errors.Is(err, errNegative) || errors.Is(err, errRange) {
		return rangeErr
	}
	return ErrHeader
}

// decodeObject decodes the JSON object in raw into its members, in order.
// Unlike encoding/json's map decoding it rejects duplicate keys, which would
// otherwise silently replace a tensor's description, and anything but
// whitespace after the object.
func decodeObject(raw []byte) ([]member, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("not a JSON object")
	}
	var members []member
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("invalid JSON: %w", err)
		}
		key, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("invalid JSON: object key %v is not a string", tok)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("invalid JSON: key %q: %w", key, err)
		}
		if seen[key] {
			return nil, fmt.Errorf("%w: key %q given twice", ErrDuplicate, key)
		}
		seen[key] = true
		members = append(members, member{key, v})
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("invalid JSON: data after the object")
	}
	return members, nil
}

// decodeString decodes a JSON string; null or any other type is an error.
func decodeString(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '"' {
		return "", fmt.Errorf("not a string: %.40s", raw)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", err
	}
	return s, nil
}

// parseStringMap decodes a JSON object of strings. null decodes to nil.
func parseStringMap(raw json.RawMessage) (map[string]string, error) {
	if string(bytes.TrimSpace(raw)) == "null" {
		return nil, nil
	}
	members, err := decodeObject(raw)
	if err != nil {
		return nil, err
	}
	m := make(map[string]string, len(members))
	for _, mb := range members {
		s, err := decodeString(mb.value)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", mb.key, err)
		}
		m[mb.key] = s
	}
	return m, nil
}

// decodeUints decodes a JSON array of non-negative integers. Fractions,
// exponents, strings and null are errors, as they are for the reference
// implementation's usize fields.
func decodeUints(raw json.RawMessage) ([]uint64, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '[' {
		return nil, fmt.Errorf("not an array: %.40s", raw)
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, err
	}
	out := make([]uint64, len(elems))
	for i, e := range elems {
		s := string(bytes.TrimSpace(e))
		v, err := strconv.ParseUint(s, 10, 64)
		switch {
		case err == nil:
			out[i] = v
		case errors.Is(err, strconv.ErrRange):
			return nil, fmt.Errorf("%w: %s", errRange, s)
		case strings.HasPrefix(s, "-") && isInteger(s[1:]):
			return nil, fmt.Errorf("%w: %s", errNegative, s)
		default:
			return nil, fmt.Errorf("not an integer: %.40s", s)
		}
	}
	return out, nil
}

// isInteger reports whether s is a non-empty run of decimal digits.
func isInteger(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
