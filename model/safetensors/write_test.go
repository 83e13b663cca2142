package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestWriteErrors(t *testing.T) {
	ok := tensorOf("ok", F32, 2)
	tests := []struct {
		name     string
		tensors  []WriteTensor
		metadata map[string]string
		want     error
	}{
		{"short data", []WriteTensor{{"a", F32, []int{2, 2}, make([]byte, 15)}}, nil, ErrShape},
		{"long data", []WriteTensor{{"a", BF16, []int{2}, make([]byte, 5)}}, nil, ErrShape},
		{"scalar without data", []WriteTensor{{"a", F32, nil, nil}}, nil, ErrShape},
		{"negative dimension", []WriteTensor{{"a", F32, []int{-1}, nil}}, nil, ErrShape},
		{"overflow", []WriteTensor{{"a", F32, []int{math.MaxInt/2 + 1, 4}, nil}}, nil, ErrShape},
		{"unknown dtype", []WriteTensor{{"a", "F12", []int{1}, make([]byte, 2)}}, nil, ErrDType},
		{"empty dtype", []WriteTensor{{"a", "", []int{1}, make([]byte, 2)}}, nil, ErrDType},
		{"duplicate", []WriteTensor{ok, ok}, nil, ErrDuplicate},
		{"empty name", []WriteTensor{{"", U8, []int{1}, []byte{1}}}, nil, ErrHeader},
		{"reserved name", []WriteTensor{{"__metadata__", U8, []int{1}, []byte{1}}}, nil, ErrHeader},
		{"invalid UTF-8 name", []WriteTensor{{"\xff", U8, []int{1}, []byte{1}}}, nil, ErrHeader},
		{"invalid UTF-8 metadata", []WriteTensor{ok}, map[string]string{"k": "\xff"}, ErrHeader},
		{"escaped names too large", []WriteTensor{{strings.Repeat("\x01", MaxHeaderSize/6+1), U8, []int{1}, []byte{1}}}, nil, ErrHeader},
		{"header too large", []WriteTensor{{strings.Repeat("n", MaxHeaderSize-10), U8, []int{1}, []byte{1}}}, nil, ErrHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := Write(&buf, tt.tensors, tt.metadata); !errors.Is(err, tt.want) {
				t.Fatalf("Write = %v; want %v", err, tt.want)
			}
			if buf.Len() != 0 {
				t.Errorf("Write wrote %d bytes before failing", buf.Len())
			}
			if len(tt.tensors) > 0 && len(tt.tensors[0].Name) > 1<<20 {
				return // huge: WriteFile runs the same checks as Write
			}
			dir := t.TempDir()
			if err := WriteFile(filepath.Join(dir, "m.safetensors"), tt.tensors, tt.metadata); !errors.Is(err, tt.want) {
				t.Fatalf("WriteFile = %v; want %v", err, tt.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("WriteFile left %v", entries)
			}
		})
	}
}

func TestWriteLayout(t *testing.T) {
	var buf bytes.Buffer
	tensors := []WriteTensor{
		tensorOf("z.u8", U8, 3),
		tensorOf("b.bf16", BF16, 3),
		tensorOf("a.bf16", BF16, 1),
		tensorOf("y.f32", F32, 2),
		tensorOf("q\"<&>\n\x01", U8, 1),
	}
	if err := Write(&buf, tensors, map[string]string{"b": "2", "a": "1"}); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	n := binary.LittleEndian.Uint64(b)
	if n%8 != 0 {
		t.Errorf("header length %d is not a multiple of 8", n)
	}
	header := string(b[8 : 8+n])
	want := `{"__metadata__":{"a":"1","b":"2"},` +
		`"y.f32":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},` +
		`"a.bf16":{"dtype":"BF16","shape":[1],"data_offsets":[8,10]},` +
		`"b.bf16":{"dtype":"BF16","shape":[3],"data_offsets":[10,16]},` +
		`"q\"<&>\n\u0001":{"dtype":"U8","shape":[1],"data_offsets":[16,17]},` +
		`"z.u8":{"dtype":"U8","shape":[3],"data_offsets":[17,20]}}`
	if strings.TrimRight(header, " ") != want || len(header)-len(want) >= 8 {
		t.Errorf("header =\n%q\nwant\n%q padded with spaces", header, want)
	}
	var data []byte
	for _, i := range []int{3, 2, 1, 4, 0} {
		data = append(data, tensors[i].Data...)
	}
	if !bytes.Equal(b[8+n:], data) {
		t.Errorf("data = %x, want %x", b[8+n:], data)
	}
	if _, err := ParseHeader(b, int64(len(b))); err != nil {
		t.Errorf("ParseHeader of written file: %v", err)
	}
}

// failingWriter fails after n bytes.
type failingWriter struct{ n int }

var errWriter = errors.New("disk full")

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		return 0, errWriter
	}
	w.n -= len(p)
	return len(p), nil
}

func TestWriteReturnsWriterErrors(t *testing.T) {
	tensors := []WriteTensor{tensorOf("a", F32, 4), tensorOf("b", F32, 4)}
	for _, n := range []int{0, 100, 100 + 16} {
		if err := Write(&failingWriter{n}, tensors, nil); !errors.Is(err, errWriter) {
			t.Errorf("Write failing after %d bytes = %v; want errWriter", n, err)
		}
	}
	if err := WriteFile(filepath.Join(t.TempDir(), "no", "such", "dir"), tensors, nil); err == nil {
		t.Error("WriteFile into a missing directory succeeded")
	}
}

func TestWriteIndex(t *testing.T) {
	path := filepath.Join(t.TempDir(), IndexFileName)
	wm := map[string]string{
		"b":           ShardFileName(2, 2),
		"a":           ShardFileName(1, 2),
		"<odd>&name":  ShardFileName(1, 2),
		"in/sub.file": "sub/x.safetensors",
	}
	if err := WriteIndex(path, 1234, wm); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "metadata": {
    "total_size": 1234
  },
  "weight_map": {
    "<odd>&name": "model-00001-of-00002.safetensors",
    "a": "model-00001-of-00002.safetensors",
    "b": "model-00002-of-00002.safetensors",
    "in/sub.file": "sub/x.safetensors"
  }
}
`
	if string(got) != want {
		t.Errorf("index =\n%s\nwant\n%s", got, want)
	}
	x, err := ReadIndex(path)
	if err != nil {
		t.Fatal(err)
	}
	if x.TotalSize != 1234 || !reflect.DeepEqual(x.WeightMap, wm) {
		t.Errorf("ReadIndex = %+v", x)
	}
	if files := x.Files(); !reflect.DeepEqual(files, []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "sub/x.safetensors"}) {
		t.Errorf("Files = %q", files)
	}

	for _, bad := range []map[string]string{
		{"a": "../escape.safetensors"},
		{"a": "/abs.safetensors"},
		{"a": ""},
		{"a": `back\slash`},
		{"\xff": "x.safetensors"},
	} {
		if err := WriteIndex(path, 0, bad); !errors.Is(err, ErrIndex) {
			t.Errorf("WriteIndex(%q) = %v; want ErrIndex", bad, err)
		}
	}
	if err := WriteIndex(path, -1, nil); !errors.Is(err, ErrIndex) {
		t.Errorf("WriteIndex(total -1) = %v; want ErrIndex", err)
	}
}

func TestShardFileName(t *testing.T) {
	if got := ShardFileName(3, 19); got != "model-00003-of-00019.safetensors" {
		t.Errorf("ShardFileName(3, 19) = %q", got)
	}
}

// FuzzWriteRoundTrip checks that any valid name and metadata survive
// Write and ParseHeader unchanged, escaping included.
func FuzzWriteRoundTrip(f *testing.F) {
	f.Add("model.layers.0.mlp.weight", "format", "pt")
	f.Add("q\"\\\n\x00\x1f\u2028<>&é", "\x7f", "")
	f.Fuzz(func(t *testing.T, name, key, value string) {
		ws := []WriteTensor{{name, BF16, []int{2}, []byte{1, 2, 3, 4}}}
		md := map[string]string{key: value}
		var buf bytes.Buffer
		if err := Write(&buf, ws, md); err != nil {
			if !errors.Is(err, ErrHeader) {
				t.Fatalf("Write = %v", err)
			}
			return // invalid UTF-8 or reserved name
		}
		b := buf.Bytes()
		var escaped bytes.Buffer
		for _, s := range []string{name, key, value} {
			escaped.Reset()
			writeJSONString(&escaped, s)
			if escaped.Len() != jsonStringLen(s) {
				t.Fatalf("jsonStringLen(%q) = %d, wrote %d bytes", s, jsonStringLen(s), escaped.Len())
			}
		}
		h, err := ParseHeader(b, int64(len(b)))
		if err != nil {
			t.Fatalf("ParseHeader of Write output: %v\n%q", err, b)
		}
		if len(h.Tensors) != 1 || h.Tensors[0].Name != name || !reflect.DeepEqual(h.Metadata, md) {
			t.Fatalf("round trip of %q, %q: %+v", name, md, h)
		}
		if h.DataOffset%8 != 0 {
			t.Fatalf("data at offset %d", h.DataOffset)
		}
	})
}

// TestWriteFileAligned checks that WriteFileAligned starts the data on a
// 64-byte boundary, whatever the header's length, and holds what
// WriteFile does.
func TestWriteFileAligned(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"w", "a.longer.name", strings.Repeat("n", 61)} {
		ws := []WriteTensor{
			{Name: name, DType: F32, Shape: []int{4, 16}, Data: bytes.Repeat([]byte{1, 2, 3, 4}, 64)},
			{Name: "bias", DType: BF16, Shape: []int{32}, Data: bytes.Repeat([]byte{5, 6}, 32)},
		}
		plain, aligned := filepath.Join(dir, "plain.safetensors"), filepath.Join(dir, "aligned.safetensors")
		if err := WriteFile(plain, ws, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
		if err := WriteFileAligned(aligned, ws, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
		p, err := OpenFile(plain)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		a, err := OpenFile(aligned)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		if a.header.DataOffset%64 != 0 {
			t.Errorf("%q: data at offset %d, want a multiple of 64", name, a.header.DataOffset)
		}
		for _, w := range ws {
			pt, err := p.Tensor(w.Name)
			if err != nil {
				t.Fatal(err)
			}
			at, err := a.Tensor(w.Name)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(pt, at) {
				t.Errorf("%q: tensor %q differs between WriteFile and WriteFileAligned", name, w.Name)
			}
		}
	}
}
