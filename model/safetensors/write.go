package safetensors

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// WriteTensor is a tensor to write.
type WriteTensor struct {
	Name  string
	DType DType
	// Shape holds the dimensions, outermost first; empty for a scalar.
	Shape []int
	// Data holds the tensor's bytes, row-major, little-endian.
	Data []byte
}

// Write writes a safetensors file holding tensors and, if it is not empty,
// metadata. It writes the same bytes as the reference implementation:
// tensors ordered by decreasing dtype size (more precisely, the reference's
// dtype order) and then by name, which keeps every tensor aligned to its
// element size; the header lists them in that order, compact, and is padded
// with spaces to a multiple of 8 bytes. Metadata keys are sorted.
//
// Write checks its input first and writes nothing if it is invalid: names
// must be non-empty, unique, valid UTF-8 and not "__metadata__"; dtypes
// supported; and len(Data) must equal the product of Shape times the dtype
// size.
func Write(w io.Writer, tensors []WriteTensor, metadata map[string]string) error {
	order, header, err := prepare(tensors, metadata, referenceAlign)
	if err != nil {
		return err
	}
	return writePrepared(w, tensors, order, header)
}

// writePrepared writes header and then the tensors' data in order.
func writePrepared(w io.Writer, tensors []WriteTensor, order []int, header []byte) error {
	if _, err := w.Write(header); err != nil {
		return fmt.Errorf("safetensors: write header: %w", err)
	}
	for _, i := range order {
		if _, err := w.Write(tensors[i].Data); err != nil {
			return fmt.Errorf("safetensors: write tensor %q: %w", tensors[i].Name, err)
		}
	}
	return nil
}

// The header padding: the reference implementation's, and the one that
// starts the data on a cache line, so that a tensor whose size is a
// multiple of 64 bytes (every matrix of a model whose dimensions are
// multiples of 16 or 32) begins on one too, and a 64-byte vector load
// never straddles two lines. On an Intel Xeon that made a small F32
// model's decode 2-5 % and its 16-stream and prefill steps 6-10 % faster.
const (
	referenceAlign = 8
	cacheLineAlign = 64
)

// prepare validates tensors and metadata and returns the order in which to
// write the tensors' data and the file's first bytes: the length prefix and
// the header, padded so that the data starts at a multiple of align bytes.
func prepare(tensors []WriteTensor, metadata map[string]string, align int) ([]int, []byte, error) {
	// The escaped names and metadata alone bound the header size from
	// below; checking them first fails fast on oversized input.
	nameBytes := 0
	for _, t := range tensors {
		nameBytes += jsonStringLen(t.Name)
	}
	for k, v := range metadata {
		nameBytes += jsonStringLen(k) + jsonStringLen(v)
	}
	if nameBytes > MaxHeaderSize {
		return nil, nil, fmt.Errorf("%w: names and metadata of %d bytes exceed the header limit of %d", ErrHeader, nameBytes, MaxHeaderSize)
	}
	seen := make(map[string]bool, len(tensors))
	for _, t := range tensors {
		switch {
		case t.Name == "" || t.Name == metadataKey || !utf8.ValidString(t.Name):
			return nil, nil, fmt.Errorf("%w: invalid tensor name %q", ErrHeader, t.Name)
		case seen[t.Name]:
			return nil, nil, fmt.Errorf("%w: %q", ErrDuplicate, t.Name)
		case !t.DType.Valid():
			return nil, nil, fmt.Errorf("%w: tensor %q: dtype %q", ErrDType, t.Name, t.DType)
		}
		seen[t.Name] = true
		size, ok := byteSize(t.DType, t.Shape)
		if !ok {
			return nil, nil, fmt.Errorf("%w: tensor %q: shape %v of %s is negative or overflows", ErrShape, t.Name, t.Shape, t.DType)
		}
		if size != int64(len(t.Data)) {
			return nil, nil, fmt.Errorf("%w: tensor %q: shape %v of %s needs %d bytes, got %d", ErrShape, t.Name, t.Shape, t.DType, size, len(t.Data))
		}
	}
	for k, v := range metadata {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return nil, nil, fmt.Errorf("%w: metadata %q: not valid UTF-8", ErrHeader, k)
		}
	}

	order := make([]int, len(tensors))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(i, j int) int {
		a, b := tensors[i], tensors[j]
		if ra, rb := dtypes[a.DType].rank, dtypes[b.DType].rank; ra != rb {
			return rb - ra
		}
		return strings.Compare(a.Name, b.Name)
	})

	var buf bytes.Buffer
	buf.Write(make([]byte, 8)) // length prefix, filled in below
	buf.WriteByte('{')
	if len(metadata) > 0 {
		writeJSONString(&buf, metadataKey)
		buf.WriteString(":{")
		for i, k := range slices.Sorted(maps.Keys(metadata)) {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeJSONString(&buf, k)
			buf.WriteByte(':')
			writeJSONString(&buf, metadata[k])
		}
		buf.WriteByte('}')
	}
	var offset int64
	for n, i := range order {
		t := tensors[i]
		if n > 0 || len(metadata) > 0 {
			buf.WriteByte(',')
		}
		writeJSONString(&buf, t.Name)
		buf.WriteString(`:{"dtype":`)
		writeJSONString(&buf, string(t.DType))
		buf.WriteString(`,"shape":[`)
		for k, d := range t.Shape {
			if k > 0 {
				buf.WriteByte(',')
			}
			buf.WriteString(strconv.Itoa(d))
		}
		end := offset + int64(len(t.Data))
		fmt.Fprintf(&buf, `],"data_offsets":[%d,%d]}`, offset, end)
		offset = end
	}
	buf.WriteByte('}')
	for buf.Len()%align != 0 {
		buf.WriteByte(' ')
	}
	header := buf.Bytes()
	n := len(header) - 8
	if n > MaxHeaderSize {
		return nil, nil, fmt.Errorf("%w: header of %d bytes exceeds the limit of %d", ErrHeader, n, MaxHeaderSize)
	}
	binary.LittleEndian.PutUint64(header, uint64(n))
	return order, header, nil
}

// jsonStringLen returns the length of s written by writeJSONString.
func jsonStringLen(s string) int {
	n := len(s) + 2
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t':
			n++
		case c < 0x20:
			n += 5
		}
	}
	return n
}

// writeJSONString writes s as a JSON string the way the reference
// implementation (serde_json) does: only '"', '\\' and control characters
// are escaped, unlike encoding/json, which also escapes <, >, & and U+2028/9.
func writeJSONString(buf *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	buf.WriteByte('"')
	start := 0 // s[start:i] needs no escaping
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		buf.WriteString(s[start:i])
		start = i + 1
		switch c {
		case '"', '\\':
			buf.WriteByte('\\')
			buf.WriteByte(c)
		case '\b':
			buf.WriteString(`\b`)
		case '\f':
			buf.WriteString(`\f`)
		case '\n':
			buf.WriteString(`\n`)
		case '\r':
			buf.WriteString(`\r`)
		case '\t':
			buf.WriteString(`\t`)
		default:
			buf.WriteString(`\u00`)
			buf.WriteByte(hex[c>>4])
			buf.WriteByte(hex[c&0xf])
		}
	}
	buf.WriteString(s[start:])
	buf.WriteByte('"')
}

// WriteFile writes a safetensors file (see [Write]) to path, with mode 0644.
// It writes a temporary file in the same directory and renames it into
// place, so readers never see a partial file and a File mapping the old
// contents stays valid.
func WriteFile(path string, tensors []WriteTensor, metadata map[string]string) error {
	return writeFile(path, tensors, metadata, referenceAlign)
}

// WriteFileAligned is WriteFile with the header padded to a multiple of 64
// bytes instead of 8, so that the tensor data starts on a cache line:
// still a valid safetensors file (the format allows any padding of spaces),
// no longer byte for byte the reference implementation's.
func WriteFileAligned(path string, tensors []WriteTensor, metadata map[string]string) error {
	return writeFile(path, tensors, metadata, cacheLineAlign)
}

func writeFile(path string, tensors []WriteTensor, metadata map[string]string, align int) error {
	order, header, err := prepare(tensors, metadata, align)
	if err != nil {
		return err // fail before touching the file system
	}
	return writeAtomic(path, func(w io.Writer) error { return writePrepared(w, tensors, order, header) })
}

// WriteIndex writes a model.safetensors.index.json to path, formatted as
// transformers does (two-space indentation, sorted keys), atomically like
// [WriteFile]. weightMap maps each tensor name to its shard file, relative
// to the index's directory, slash-separated.
func WriteIndex(path string, totalSize int64, weightMap map[string]string) error {
	if totalSize < 0 {
		return fmt.Errorf("%w: negative total size %d", ErrIndex, totalSize)
	}
	for name, file := range weightMap {
		if !utf8.ValidString(name) || !validShardName(file) || !utf8.ValidString(file) {
			return fmt.Errorf("%w: tensor %q: bad entry %q", ErrIndex, name, file)
		}
	}
	type metadata struct {
		TotalSize int64 `json:"total_size"`
	}
	index := struct {
		Metadata  metadata          `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}{metadata{totalSize}, weightMap}
	if index.WeightMap == nil {
		index.WeightMap = map[string]string{}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(index); err != nil {
		return fmt.Errorf("safetensors: encode index: %w", err)
	}
	return writeAtomic(path, func(w io.Writer) error {
		if _, err := w.Write(buf.Bytes()); err != nil {
			return fmt.Errorf("safetensors: write %s: %w", path, err)
		}
		return nil
	})
}

// writeAtomic writes a file at path with write, by way of a temporary file
// in the same directory that is synced and renamed into place. Errors from
// write are returned as they are.
func writeAtomic(path string, write func(io.Writer) error) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20) // small tensors: fewer syscalls
	if err := write(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("safetensors: write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	return nil
}
