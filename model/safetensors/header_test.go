package safetensors

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// rawFile returns a safetensors file with the given header text, unpadded,
// and dataLen zero bytes of data.
func rawFile(header string, dataLen int) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(b, header...)
	return append(b, make([]byte, dataLen)...)
}

// lengthPrefix returns a file that is only a header length prefix and rest.
func lengthPrefix(n uint64, rest string) []byte {
	return append(binary.LittleEndian.AppendUint64(nil, n), rest...)
}

// A valid entry, to build headers from.
const f32x4 = `{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}`

// badHeaders are malformed files, each with the error it must produce.
var badHeaders = []struct {
	name string
	file []byte
	want error
}{
	{"empty file", nil, ErrHeader},
	{"short length prefix", []byte{1, 0, 0}, ErrHeader},
	{"length beyond limit", lengthPrefix(MaxHeaderSize+1, "{}"), ErrHeader},
	{"length beyond file", lengthPrefix(100, "{}"), ErrHeader},
	{"length 2^64-1", lengthPrefix(1<<64-1, "{}"), ErrHeader},
	{"zero length", lengthPrefix(0, ""), ErrHeader},
	{"not UTF-8", rawFile("{\"\xff\":1}", 0), ErrHeader},
	{"not JSON", rawFile("{", 0), ErrHeader},
	{"not an object", rawFile("[]", 0), ErrHeader},
	{"a string", rawFile(`"x"`, 0), ErrHeader},
	{"trailing data", rawFile("{} {}", 0), ErrHeader},
	{"trailing garbage", rawFile("{}x", 0), ErrHeader},
	{"NUL padding", rawFile("{}\x00", 0), ErrHeader},
	{"duplicate tensor", rawFile(`{"a":`+f32x4+`,"a":`+f32x4+`}`, 16), ErrDuplicate},
	{"duplicate metadata", rawFile(`{"__metadata__":{},"__metadata__":{}}`, 0), ErrDuplicate},
	{"duplicate metadata key", rawFile(`{"__metadata__":{"k":"a","k":"b"}}`, 0), ErrDuplicate},
	{"metadata not object", rawFile(`{"__metadata__":"x"}`, 0), ErrHeader},
	{"metadata number value", rawFile(`{"__metadata__":{"k":1}}`, 0), ErrHeader},
	{"metadata null value", rawFile(`{"__metadata__":{"k":null}}`, 0), ErrHeader},
	{"metadata nested", rawFile(`{"__metadata__":{"k":{}}}`, 0), ErrHeader},
	{"tensor not object", rawFile(`{"a":1}`, 0), ErrHeader},
	{"tensor null", rawFile(`{"a":null}`, 0), ErrHeader},
	{"missing dtype", rawFile(`{"a":{"shape":[],"data_offsets":[0,4]}}`, 4), ErrHeader},
	{"missing shape", rawFile(`{"a":{"dtype":"F32","data_offsets":[0,4]}}`, 4), ErrHeader},
	{"missing data_offsets", rawFile(`{"a":{"dtype":"F32","shape":[]}}`, 4), ErrHeader},
	{"extra field", rawFile(`{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4],"x":1}}`, 4), ErrHeader},
	{"field in other case", rawFile(`{"a":{"DType":"F32","shape":[],"data_offsets":[0,4]}}`, 4), ErrHeader},
	{"duplicate field", rawFile(`{"a":{"dtype":"F32","dtype":"F32","shape":[],"data_offsets":[0,4]}}`, 4), ErrDuplicate},
	{"unknown dtype", rawFile(`{"a":{"dtype":"F99","shape":[],"data_offsets":[0,4]}}`, 4), ErrDType},
	{"lower-case dtype", rawFile(`{"a":{"dtype":"f32","shape":[],"data_offsets":[0,4]}}`, 4), ErrDType},
	{"sub-byte dtype", rawFile(`{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}`, 1), ErrDType},
	{"dtype not string", rawFile(`{"a":{"dtype":4,"shape":[],"data_offsets":[0,4]}}`, 4), ErrHeader},
	{"dtype null", rawFile(`{"a":{"dtype":null,"shape":[],"data_offsets":[0,4]}}`, 4), ErrHeader},
	{"negative dimension", rawFile(`{"a":{"dtype":"F32","shape":[-1,2],"data_offsets":[0,4]}}`, 4), ErrShape},
	{"fractional dimension", rawFile(`{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}`, 4), ErrHeader},
	{"exponent dimension", rawFile(`{"a":{"dtype":"F32","shape":[1e0],"data_offsets":[0,4]}}`, 4), ErrHeader},
	{"string dimension", rawFile(`{"a":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}}`, 4), ErrHeader},
	{"shape null", rawFile(`{"a":{"dtype":"F32","shape":null,"data_offsets":[0,4]}}`, 4), ErrHeader},
	{"shape not array", rawFile(`{"a":{"dtype":"F32","shape":1,"data_offsets":[0,4]}}`, 4), ErrHeader},
	{"dimension beyond uint64", rawFile(`{"a":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,4]}}`, 4), ErrShape},
	{"dimension beyond int", rawFile(`{"a":{"dtype":"F32","shape":[18446744073709551614],"data_offsets":[0,4]}}`, 4), ErrShape},
	{"element count overflow", rawFile(`{"a":{"dtype":"I32","shape":[2,9223372036854775807],"data_offsets":[0,16]}}`, 16), ErrShape},
	{"byte size overflow", rawFile(`{"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,16]}}`, 16), ErrShape},
	{"overflow before zero", rawFile(`{"a":{"dtype":"U8","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}}`, 0), ErrShape},
	{"one offset", rawFile(`{"a":{"dtype":"F32","shape":[],"data_offsets":[4]}}`, 4), ErrHeader},
	{"three offsets", rawFile(`{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4,8]}}`, 8), ErrHeader},
	{"offsets not array", rawFile(`{"a":{"dtype":"F32","shape":[],"data_offsets":{"0":4}}}`, 4), ErrHeader},
	{"negative offset", rawFile(`{"a":{"dtype":"F32","shape":[],"data_offsets":[-4,0]}}`, 4), ErrBounds},
	{"reversed offsets", rawFile(`{"a":{"dtype":"F32","shape":[],"data_offsets":[4,0]}}`, 4), ErrBounds},
	{"end beyond data", rawFile(`{"a":`+f32x4+`}`, 15), ErrBounds},
	{"offset beyond uint64", rawFile(`{"a":{"dtype":"F32","shape":[],"data_offsets":[0,18446744073709551620]}}`, 4), ErrBounds},
	{"huge offsets", rawFile(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551614,18446744073709551615]}}`, 4), ErrBounds},
	{"size too small", rawFile(`{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}`, 16), ErrShape},
	{"size too large", rawFile(`{"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,16]}}`, 16), ErrShape},
	{"scalar with no data", rawFile(`{"a":{"dtype":"F32","shape":[],"data_offsets":[0,0]}}`, 0), ErrShape},
	{"same offsets", rawFile(`{"a":`+f32x4+`,"b":`+f32x4+`}`, 16), ErrOverlap},
	{"partial overlap", rawFile(`{"a":`+f32x4+`,"b":{"dtype":"F32","shape":[4],"data_offsets":[12,28]}}`, 28), ErrOverlap},
	{"contained", rawFile(`{"a":{"dtype":"U8","shape":[32],"data_offsets":[0,32]},"b":{"dtype":"U8","shape":[2],"data_offsets":[20,22]}}`, 32), ErrOverlap},
	{"overlap past a contained one", rawFile(`{"a":{"dtype":"U8","shape":[32],"data_offsets":[0,32]},"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},"c":{"dtype":"U8","shape":[2],"data_offsets":[30,32]}}`, 32), ErrOverlap},
}

func TestParseHeaderErrors(t *testing.T) {
	for _, tt := range badHeaders {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ParseHeader(tt.file, int64(len(tt.file)))
			if !errors.Is(err, tt.want) {
				t.Fatalf("ParseHeader = %+v, %v; want %v", h, err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "safetensors: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
			// The same file on disk gives the same error from OpenFile.
			path := filepath.Join(t.TempDir(), "bad.safetensors")
			if err := os.WriteFile(path, tt.file, 0o644); err != nil {
				t.Fatal(err)
			}
			if f, err := OpenFile(path); !errors.Is(err, tt.want) {
				if err == nil {
					f.Close()
				}
				t.Fatalf("OpenFile = %v; want %v", err, tt.want)
			}
		})
	}
}

func TestParseHeaderErrorNamesTensor(t *testing.T) {
	file := rawFile(`{"good":`+f32x4+`,"model.layers.3.mlp.weight":{"dtype":"F32","shape":[3],"data_offsets":[16,40]}}`, 40)
	_, err := ParseHeader(file, int64(len(file)))
	if !errors.Is(err, ErrShape) || !strings.Contains(err.Error(), `"model.layers.3.mlp.weight"`) {
		t.Fatalf("ParseHeader = %v; want ErrShape naming the tensor", err)
	}
}

func TestParseHeaderTruncatedData(t *testing.T) {
	// data holds less than the header length promises.
	file := rawFile(`{"a":`+f32x4+`}`, 16)
	if _, err := ParseHeader(file[:20], int64(len(file))); !errors.Is(err, ErrHeader) {
		t.Errorf("ParseHeader(truncated) = %v; want ErrHeader", err)
	}
	if _, err := ParseHeader(file, int64(len(file)-1)); !errors.Is(err, ErrHeader) {
		t.Errorf("ParseHeader(data longer than file) = %v; want ErrHeader", err)
	}
	// The header alone suffices when the file size is known.
	h, err := ParseHeader(file[:len(file)-16], int64(len(file)))
	if err != nil || len(h.Tensors) != 1 {
		t.Errorf("ParseHeader(header only) = %+v, %v", h, err)
	}
}

func TestParseHeaderValid(t *testing.T) {
	tests := []struct {
		name     string
		file     []byte
		tensors  []TensorInfo
		metadata map[string]string
	}{
		{"empty", rawFile(`{}`, 0), []TensorInfo{}, nil},
		{"whitespace around", rawFile(" \t\n{} \r\n", 0), []TensorInfo{}, nil},
		{"metadata", rawFile(`{"__metadata__":{"format":"pt","x":"\u00e9\n"}}`, 0), []TensorInfo{}, map[string]string{"format": "pt", "x": "é\n"}},
		{"metadata null", rawFile(`{"__metadata__":null}`, 0), []TensorInfo{}, nil},
		{"scalar", rawFile(`{"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]}}`, 8),
			[]TensorInfo{{"s", F64, []int{}, 0, 8}}, nil},
		{"unsorted, any order", rawFile(`{"z":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}`, 3),
			[]TensorInfo{{"a", U8, []int{2}, 1, 3}, {"z", U8, []int{1}, 0, 1}}, nil},
		{"fields in any order", rawFile(`{"t":{"data_offsets":[0,2],"shape":[1],"dtype":"BF16"}}`, 2),
			[]TensorInfo{{"t", BF16, []int{1}, 0, 2}}, nil},
		{"holes and trailing bytes", rawFile(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},"b":{"dtype":"U8","shape":[2],"data_offsets":[10,12]}}`, 20),
			[]TensorInfo{{"a", U8, []int{2}, 4, 6}, {"b", U8, []int{2}, 10, 12}}, nil},
		{"empty tensors overlap nothing", rawFile(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"e":{"dtype":"F32","shape":[0,3],"data_offsets":[2,2]},"f":{"dtype":"F32","shape":[3,0],"data_offsets":[2,2]}}`, 4),
			[]TensorInfo{{"a", U8, []int{4}, 0, 4}, {"e", F32, []int{0, 3}, 2, 2}, {"f", F32, []int{3, 0}, 2, 2}}, nil},
		{"adjacent", rawFile(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}`, 8),
			[]TensorInfo{{"a", U8, []int{4}, 0, 4}, {"b", U8, []int{4}, 4, 8}}, nil},
		{"odd names", rawFile(`{"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"\"\\\u0000":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, 2),
			[]TensorInfo{{"", U8, []int{1}, 0, 1}, {"\"\\\x00", U8, []int{1}, 1, 2}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ParseHeader(tt.file, int64(len(tt.file)))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(h.Tensors, tt.tensors) || !reflect.DeepEqual(h.Metadata, tt.metadata) {
				t.Errorf("ParseHeader = %+v, %v; want %+v, %v", h.Tensors, h.Metadata, tt.tensors, tt.metadata)
			}
			n := int64(binary.LittleEndian.Uint64(tt.file))
			if h.DataOffset != 8+n || h.DataOffset+h.DataSize != int64(len(tt.file)) {
				t.Errorf("DataOffset, DataSize = %d, %d for a header of %d in %d bytes", h.DataOffset, h.DataSize, n, len(tt.file))
			}
			for _, want := range tt.tensors {
				if got, ok := h.Lookup(want.Name); !ok || got.Name != want.Name {
					t.Errorf("Lookup(%q) = %+v, %v", want.Name, got, ok)
				}
			}
			if _, ok := h.Lookup("missing"); ok {
				t.Error(`Lookup("missing") found a tensor`)
			}
		})
	}
}

// FuzzParseHeader checks that ParseHeader never panics and that whatever it
// accepts is safe to use: every tensor within the data section, sized by its
// shape, and no two sharing a byte.
func FuzzParseHeader(f *testing.F) {
	for _, tt := range badHeaders {
		f.Add(tt.file, uint16(0))
	}
	f.Add(rawFile(`{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[16,28]},"a":`+f32x4+`}`, 28), uint16(0))
	f.Add(rawFile(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},"e":{"dtype":"F32","shape":[0],"data_offsets":[5,5]}}`, 20), uint16(3))
	if paths, err := filepath.Glob("testdata/*.safetensors"); err == nil {
		for _, p := range paths {
			if b, err := os.ReadFile(p); err == nil {
				f.Add(b, uint16(0))
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, extra uint16) {
		fileSize := int64(len(data)) + int64(extra) // as if data were a prefix
		h, err := ParseHeader(data, fileSize)
		if err != nil {
			if h.Tensors != nil || h.Metadata != nil {
				t.Fatalf("error %v with a non-empty header", err)
			}
			return
		}
		if h.DataOffset < 8 || h.DataOffset > int64(len(data)) || h.DataOffset+h.DataSize != fileSize {
			t.Fatalf("DataOffset %d, DataSize %d for %d bytes of a %d-byte file", h.DataOffset, h.DataSize, len(data), fileSize)
		}
		if !slices.IsSortedFunc(h.Tensors, func(a, b TensorInfo) int { return strings.Compare(a.Name, b.Name) }) {
			t.Fatal("tensors not sorted by name")
		}
		for i, ti := range h.Tensors {
			if i > 0 && h.Tensors[i-1].Name == ti.Name {
				t.Fatalf("tensor %q listed twice", ti.Name)
			}
			if ti.Begin < 0 || ti.Begin > ti.End || ti.End > h.DataSize {
				t.Fatalf("tensor %q: [%d, %d] outside [0, %d]", ti.Name, ti.Begin, ti.End, h.DataSize)
			}
			if size, ok := byteSize(ti.DType, ti.Shape); !ok || size != ti.Size() {
				t.Fatalf("tensor %q: shape %v of %s for %d bytes", ti.Name, ti.Shape, ti.DType, ti.Size())
			}
			if n := (Tensor{DType: ti.DType, Shape: ti.Shape}).NumElements(); int64(n*ti.DType.Size()) != ti.Size() {
				t.Fatalf("tensor %q: NumElements %d for %d bytes", ti.Name, n, ti.Size())
			}
			for _, o := range h.Tensors[:i] {
				if ti.Size() > 0 && o.Size() > 0 && ti.Begin < o.End && o.Begin < ti.End {
					t.Fatalf("tensors %q and %q overlap", o.Name, ti.Name)
				}
			}
		}
	})
}
