package gguf

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

// testMeta is metadata of every value type, nested arrays included.
func testMeta(t testing.TB) []KV {
	t.Helper()
	must := func(v Value, err error) Value {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	return []KV{
		{"general.architecture", String("llama")},
		{"u8", Uint8(200)},
		{"i8", Int8(-100)},
		{"u16", Uint16(60000)},
		{"i16", Int16(-30000)},
		{"u32", Uint32(4000000000)},
		{"i32", Int32(-2000000000)},
		{"f32", Float32(1e-5)},
		{"bool", Bool(true)},
		{"u64", Uint64(math.MaxUint64)},
		{"i64", Int64(math.MinInt64)},
		{"f64", Float64(math.Pi)},
		{"tokenizer.ggml.tokens", must(ArrayOf([]string{"<unk>", "<s>", "</s>", "▁hello"}))},
		{"tokenizer.ggml.scores", must(ArrayOf([]float32{0, 0, 0, -1.5}))},
		{"tokenizer.ggml.token_type", must(ArrayOf([]int32{2, 3, 3, 1}))},
		{"nested", must(ArrayOf([]Array{
			{Elem: TypeUint8, Values: []uint8{1, 2}},
			{Elem: TypeString, Values: []string{"a"}},
			{Elem: TypeArray, Values: []Array{{Elem: TypeBool, Values: []bool{true, false}}}},
		}))},
		{"empty", must(ArrayOf([]uint64{}))},
	}
}

// testTensors is a small model's worth of tensors of several types and
// ranks, their data a pattern that differs per tensor.
func testTensors() []Tensor {
	ts := []Tensor{
		{TensorInfo: TensorInfo{Name: "token_embd.weight", Type: TypeF32, Shape: []uint64{8, 5}}},
		{TensorInfo: TensorInfo{Name: "blk.0.attn_norm.weight", Type: TypeF32, Shape: []uint64{8}}},
		{TensorInfo: TensorInfo{Name: "blk.0.ffn_gate_exps.weight", Type: TypeQ8_0, Shape: []uint64{64, 3, 4}}},
		{TensorInfo: TensorInfo{Name: "blk.0.attn_q.weight", Type: TypeF16, Shape: []uint64{8, 3}}},
		{TensorInfo: TensorInfo{Name: "blk.0.ffn_down.0.weight", Type: TypeQ4_K, Shape: []uint64{256, 2}}},
	}
	for i := range ts {
		size, err := tensorBytes(ts[i].Type, ts[i].Shape)
		if err != nil {
			panic(err)
		}
		ts[i].Data = make([]byte, size)
		for j := range ts[i].Data {
			ts[i].Data[j] = byte(j*7 + i)
		}
	}
	return ts
}

func writeTestFile(t testing.TB, dir string, meta []KV, tensors []Tensor) string {
	t.Helper()
	path := filepath.Join(dir, "model.gguf")
	if err := WriteFile(path, meta, tensors); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestRoundTrip(t *testing.T) {
	for _, align := range []uint32{0, 1, 64, 4096} {
		meta := testMeta(t)
		want := uint64(DefaultAlignment)
		if align != 0 {
			meta = append(meta, KV{KeyAlignment, Uint32(align)})
			want = uint64(align)
		}
		tensors := testTensors()
		path := writeTestFile(t, t.TempDir(), meta, tensors)
		f, err := OpenFile(path)
		if err != nil {
			t.Fatal(err)
		}
		h := f.Header()
		if h.Version != Version || h.Alignment != want || h.DataOffset%want != 0 {
			t.Errorf("alignment %d: version %d alignment %d data offset %d", align, h.Version, h.Alignment, h.DataOffset)
		}
		if got := f.Metadata().All(); !reflect.DeepEqual(got, meta) {
			t.Errorf("alignment %d: metadata\n got %v\nwant %v", align, got, meta)
		}
		for _, tt := range tensors {
			got, err := f.Tensor(tt.Name)
			if err != nil {
				t.Fatal(err)
			}
			if got.Type != tt.Type || !reflect.DeepEqual(got.Shape, tt.Shape) || !bytes.Equal(got.Data, tt.Data) {
				t.Errorf("alignment %d: tensor %s: got %v %v %d bytes", align, tt.Name, got.Type, got.Shape, len(got.Data))
			}
			if got.Offset%want != 0 {
				t.Errorf("alignment %d: tensor %s at offset %d", align, tt.Name, got.Offset)
			}
		}
		if _, err := f.Tensor("missing"); !errors.Is(err, ErrNotFound) {
			t.Errorf("missing tensor: %v", err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if _, err := f.Tensor(tensors[0].Name); !errors.Is(err, ErrClosed) {
			t.Errorf("Tensor after Close: %v", err)
		}
	}
}

func TestMetadataLookups(t *testing.T) {
	md, err := NewMetadata(testMeta(t))
	if err != nil {
		t.Fatal(err)
	}
	if s, err := md.String("general.architecture"); err != nil || s != "llama" {
		t.Errorf("String = %q, %v", s, err)
	}
	if u, err := md.Uint("u16"); err != nil || u != 60000 {
		t.Errorf("Uint = %d, %v", u, err)
	}
	if _, err := md.Uint("i8"); !errors.Is(err, ErrType) {
		t.Errorf("Uint of a negative int8: %v", err)
	}
	if i, err := md.Int("i32"); err != nil || i != -2000000000 {
		t.Errorf("Int = %d, %v", i, err)
	}
	if _, err := md.Int("u64"); !errors.Is(err, ErrType) {
		t.Errorf("Int of MaxUint64: %v", err)
	}
	if f, err := md.Float("f32"); err != nil || f != float64(float32(1e-5)) {
		t.Errorf("Float = %g, %v", f, err)
	}
	if b, err := md.Bool("bool"); err != nil || !b {
		t.Errorf("Bool = %v, %v", b, err)
	}
	if s, err := md.Strings("tokenizer.ggml.tokens"); err != nil || len(s) != 4 || s[3] != "▁hello" {
		t.Errorf("Strings = %q, %v", s, err)
	}
	if _, err := md.Float32s("tokenizer.ggml.tokens"); !errors.Is(err, ErrType) || !strings.Contains(err.Error(), "array of string") {
		t.Errorf("Float32s of strings: %v", err)
	}
	if _, err := md.String("absent"); !errors.Is(err, ErrNotFound) {
		t.Errorf("absent key: %v", err)
	}
	if _, err := NewMetadata([]KV{{"a", Uint8(1)}, {"a", Uint8(2)}}); !errors.Is(err, ErrMetadata) {
		t.Errorf("duplicate key: %v", err)
	}
	if _, err := NewMetadata([]KV{{"a", Value{TypeArray, Array{Elem: TypeUint32, Values: []float32{1}}}}}); !errors.Is(err, ErrMetadata) {
		t.Errorf("mismatched array: %v", err)
	}
}

func TestSliceAndMatrix(t *testing.T) {
	tensors := testTensors()
	f, err := OpenFile(writeTestFile(t, t.TempDir(), testMeta(t), tensors))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	exps, err := f.Tensor("blk.0.ffn_gate_exps.weight")
	if err != nil {
		t.Fatal(err)
	}
	per := 3 * 2 * 34 // rows × blocks per row × Q8_0 block bytes
	for e := range 4 {
		s, err := exps.Slice(e)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(s.Shape, []uint64{64, 3}) || s.Size != uint64(per) || !bytes.Equal(s.Data, tensors[2].Data[e*per:(e+1)*per]) {
			t.Errorf("expert %d: shape %v size %d", e, s.Shape, s.Size)
		}
		if s.Offset != exps.Offset+uint64(e*per) {
			t.Errorf("expert %d at offset %d, want %d", e, s.Offset, exps.Offset+uint64(e*per))
		}
	}
	if _, err := exps.Slice(4); !errors.Is(err, ErrNotFound) {
		t.Errorf("slice past the end: %v", err)
	}
	if _, err := exps.Matrix(); !errors.Is(err, ErrTensor) {
		t.Errorf("Matrix of a 3-D tensor: %v", err)
	}
	embd, err := f.Tensor("token_embd.weight")
	if err != nil {
		t.Fatal(err)
	}
	m, err := embd.Matrix()
	if err != nil {
		t.Fatal(err)
	}
	if m.Rows() != 5 || m.Cols() != 8 || m.Bytes() != 160 {
		t.Errorf("matrix [%d, %d] of %d bytes", m.Rows(), m.Cols(), m.Bytes())
	}
	row := make([]float32, 8)
	m.Row(row, 2)
	if want := math.Float32frombits(binary.LittleEndian.Uint32(embd.Data[64:])); row[0] != want {
		t.Errorf("row 2 starts %g, want %g", row[0], want)
	}
}

func TestSplit(t *testing.T) {
	dir := t.TempDir()
	tensors := testTensors()
	prefix := filepath.Join(dir, "mixtral")
	parts := [][]Tensor{tensors[:2], tensors[2:4], tensors[4:]}
	write := func(i int, meta []KV) {
		t.Helper()
		if err := WriteFile(SplitPath(prefix, i+1, len(parts)), meta, parts[i]); err != nil {
			t.Fatal(err)
		}
	}
	for i := range parts {
		meta := []KV{{KeySplitNo, Uint16(uint16(i))}, {KeySplitCount, Uint16(uint16(len(parts)))}}
		if i == 0 {
			meta = append(testMeta(t), append(meta, KV{KeySplitTensorsCount, Int32(int32(len(tensors)))})...)
		}
		write(i, meta)
	}
	c, err := Open(SplitPath(prefix, 2, 3))
	if err != nil {
		t.Fatal(err)
	}
	if got := len(c.Paths()); got != 3 {
		t.Errorf("%d paths", got)
	}
	if s, _ := c.Metadata().String("general.architecture"); s != "llama" {
		t.Errorf("architecture %q", s)
	}
	for _, tt := range tensors {
		got, err := c.Tensor(tt.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Data, tt.Data) {
			t.Errorf("tensor %s differs", tt.Name)
		}
	}
	if want := []string{tensors[0].Name, tensors[1].Name, tensors[2].Name, tensors[3].Name, tensors[4].Name}; !reflect.DeepEqual(c.Names(), want) {
		t.Errorf("names %v", c.Names())
	}
	c.Close()

	// The middle part claims to be the first.
	write(1, []KV{{KeySplitNo, Uint16(0)}, {KeySplitCount, Uint16(3)}})
	if _, err := Open(SplitPath(prefix, 1, 3)); !errors.Is(err, ErrSplit) {
		t.Errorf("wrong split.no: %v", err)
	}
	write(1, []KV{{KeySplitNo, Uint16(1)}, {KeySplitCount, Uint16(3)}})
	os.Remove(SplitPath(prefix, 3, 3))
	if _, err := Open(SplitPath(prefix, 1, 3)); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing part: %v", err)
	}
	// A single file that says it is a part.
	single := filepath.Join(dir, "single.gguf")
	if err := WriteFile(single, []KV{{KeySplitCount, Uint16(2)}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(single); !errors.Is(err, ErrSplit) {
		t.Errorf("part under a plain name: %v", err)
	}
}

func TestWriterErrors(t *testing.T) {
	var buf bytes.Buffer
	infos := []TensorInfo{{Name: "a", Type: TypeF32, Shape: []uint64{2}}, {Name: "b", Type: TypeF32, Shape: []uint64{1}}}
	w, err := NewWriter(&buf, nil, infos)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteTensor("b", make([]byte, 4)); !errors.Is(err, ErrTensor) {
		t.Errorf("out of order: %v", err)
	}
	if err := w.WriteTensor("a", make([]byte, 4)); !errors.Is(err, ErrTensor) {
		t.Errorf("short data: %v", err)
	}
	if err := w.WriteTensor("a", make([]byte, 4), make([]byte, 4)); err != nil {
		t.Errorf("data in parts: %v", err)
	}
	if err := w.Close(); !errors.Is(err, ErrTensor) || !strings.Contains(err.Error(), `"b"`) {
		t.Errorf("Close with a tensor missing: %v", err)
	}
	for _, tc := range []struct {
		name  string
		meta  []KV
		infos []TensorInfo
	}{
		{"bad alignment", []KV{{KeyAlignment, Uint32(3)}}, nil},
		{"alignment type", []KV{{KeyAlignment, Uint64(32)}}, nil},
		{"duplicate tensor", nil, []TensorInfo{infos[0], infos[0]}},
		{"partial block", nil, []TensorInfo{{Name: "q", Type: TypeQ8_0, Shape: []uint64{16}}}},
		{"unknown type", nil, []TensorInfo{{Name: "q", Type: 99, Shape: []uint64{16}}}},
		{"long name", nil, []TensorInfo{{Name: strings.Repeat("n", 64), Type: TypeF32, Shape: []uint64{1}}}},
	} {
		if _, err := NewWriter(&buf, tc.meta, tc.infos); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
}

// header builds raw GGUF bytes for the malformed-input cases.
type header struct{ b []byte }

func (h *header) u32(v uint32) *header { h.b = binary.LittleEndian.AppendUint32(h.b, v); return h }
func (h *header) u64(v uint64) *header { h.b = binary.LittleEndian.AppendUint64(h.b, v); return h }
func (h *header) str(s string) *header { h.u64(uint64(len(s))); h.b = append(h.b, s...); return h }
func (h *header) raw(s string) *header { h.b = append(h.b, s...); return h }

func start(version uint32, tensors, kvs uint64) *header {
	return (&header{}).raw("GGUF").u32(version).u64(tensors).u64(kvs)
}

func TestParseErrors(t *testing.T) {
	valid, err := os.ReadFile(writeTestFile(t, t.TempDir(), testMeta(t), testTensors()))
	if err != nil {
		t.Fatal(err)
	}
	// tensor appends one F32 tensor description [n] at offset off.
	tensor := func(h *header, name string, typ uint32, off uint64, dims ...uint64) *header {
		h.str(name).u32(uint32(len(dims)))
		for _, d := range dims {
			h.u64(d)
		}
		return h.u32(typ).u64(off)
	}
	withData := func(h *header, n int) []byte { return append(h.b, make([]byte, n)...) }
	for _, tc := range []struct {
		name string
		data []byte
		want error
		text string
	}{
		{"empty", nil, ErrMagic, "magic"},
		{"wrong magic", []byte("GGML\x03\x00\x00\x00"), ErrMagic, `"GGML"`},
		{"version 1", start(1, 0, 0).b, ErrVersion, "version 1"},
		{"version 4", start(4, 0, 0).b, ErrVersion, "version 4"},
		{"big-endian", (&header{}).raw("GGUF").raw("\x00\x00\x00\x03").u64(0).u64(0).b, ErrVersion, "big-endian"},
		{"truncated counts", start(3, 0, 0).b[:20], ErrTruncated, "metadata count"},
		{"truncated file", valid[:len(valid)/3], ErrTruncated, ""},
		{"lying kv count", start(3, 0, 1<<60).b, ErrTruncated, "metadata entries"},
		{"lying tensor count", start(3, 1<<40, 0).b, ErrTruncated, "tensors cannot fit"},
		{"lying string length", start(3, 0, 1).u64(1 << 62).raw("0123456789abcdef").b, ErrTruncated, "key of"},
		{"lying array length", start(3, 0, 1).str("a").u32(uint32(TypeArray)).u32(uint32(TypeUint64)).u64(1 << 61).b, ErrTruncated, "array of"},
		{"lying string array", start(3, 0, 1).str("a").u32(uint32(TypeArray)).u32(uint32(TypeString)).u64(1 << 40).b, ErrTruncated, "array of"},
		{"unknown value type", start(3, 0, 1).str("a").u32(13).b, ErrMetadata, "value type 13"},
		{"unknown element type", start(3, 0, 1).str("a").u32(uint32(TypeArray)).u32(77).u64(0).b, ErrMetadata, "element type 77"},
		{"empty key", start(3, 0, 1).str("").u32(uint32(TypeUint8)).raw("x").b, ErrMetadata, "key"},
		{"duplicate key", start(3, 0, 2).str("a").u32(0).raw("x").str("a").u32(0).raw("y").b, ErrMetadata, `duplicate key "a"`},
		{"deep arrays", deepArray(20), ErrMetadata, "nested deeper"},
		{"bad alignment", start(3, 0, 1).str(KeyAlignment).u32(uint32(TypeUint32)).u32(48).b, ErrMetadata, "power of two"},
		{"alignment type", start(3, 0, 1).str(KeyAlignment).u32(uint32(TypeString)).str("32").b, ErrMetadata, KeyAlignment},
		{"unknown tensor type", withData(tensor(start(3, 1, 0), "t", 99, 0, 4), 64), ErrTensor, "unknown type 99"},
		{"too many dims", withData(tensor(start(3, 1, 0), "t", 0, 0, 1, 1, 1, 1, 1), 64), ErrTensor, "5 dimensions"},
		{"zero dim", withData(tensor(start(3, 1, 0), "t", 0, 0, 4, 0), 64), ErrTensor, "dimension 0"},
		{"overflowing shape", withData(tensor(start(3, 1, 0), "t", 0, 0, 1<<31, 1<<31, 1<<31), 64), ErrTensor, "overflows"},
		{"partial block", withData(tensor(start(3, 1, 0), "t", uint32(TypeQ4_K), 0, 32), 256), ErrTensor, "multiple"},
		{"duplicate tensor", withData(tensor(tensor(start(3, 2, 0), "t", 0, 0, 4), "t", 0, 32, 4), 64), ErrTensor, `duplicate tensor "t"`},
		{"long name", withData(tensor(start(3, 1, 0), strings.Repeat("x", 64), 0, 0, 4), 64), ErrTensor, "name"},
		{"misaligned offset", withData(tensor(start(3, 1, 0), "t", 0, 4, 4), 64), ErrBounds, "aligned"},
		{"offset past end", withData(tensor(start(3, 1, 0), "t", 0, 1<<40, 4), 64), ErrBounds, "spans"},
		{"data past end", withData(tensor(start(3, 1, 0), "t", 0, 0, 1024), 64), ErrBounds, "spans"},
		{"overlap", withData(tensor(tensor(start(3, 2, 0), "a", 0, 0, 16), "b", 0, 32, 8), 128), ErrBounds, "overlap"},
		{"no data section", tensor(start(3, 1, 0), "t", 0, 0, 4).b, ErrTruncated, "data section"},
	} {
		_, err := Parse(tc.data)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: got %v, want %v containing %q", tc.name, err, tc.want, tc.text)
		}
	}
}

// deepArray is a file whose one value is an array of arrays n deep.
func deepArray(n int) []byte {
	h := start(3, 0, 1).str("deep").u32(uint32(TypeArray))
	for range n {
		h.u32(uint32(TypeArray)).u64(1)
	}
	return h.u32(uint32(TypeUint8)).u64(0).b
}

func TestOpenFileErrors(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short.gguf")
	if err := os.WriteFile(short, []byte("GGUF\x03"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFile(short); !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), short) {
		t.Errorf("short file: %v", err)
	}
	if _, err := OpenFile(dir); err == nil {
		t.Errorf("directory: no error")
	}
	if _, err := Open(filepath.Join(dir, "absent.gguf")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("absent file: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	dir := f.TempDir()
	seed, err := os.ReadFile(writeTestFile(f, dir, testMeta(f), testTensors()))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add(seed[:len(seed)/2])
	f.Add(start(3, 0, 0).b)
	f.Add(deepArray(3))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := Parse(data)
		if err != nil {
			return
		}
		// Whatever parses must lie inside data and write back to a file
		// that parses the same.
		var tensors []Tensor
		for _, ti := range h.Tensors {
			start := h.DataOffset + ti.Offset
			if start+ti.Size > uint64(len(data)) {
				t.Fatalf("tensor %q [%d, %d) past the end of %d bytes", ti.Name, start, start+ti.Size, len(data))
			}
			tt := Tensor{TensorInfo: ti, Data: data[start : start+ti.Size]}
			tensors = append(tensors, tt)
			// Views of whatever parses must work: widening, slicing,
			// matrices.
			if ti.Size <= 1<<16 {
				if _, err := tt.Format(); err == nil {
					if v, err := tt.Float32s(); err != nil || uint64(len(v)) != ti.Elements() {
						t.Fatalf("Float32s of %q: %d values, %v", ti.Name, len(v), err)
					}
				}
				if len(ti.Shape) == 2 {
					tt.Matrix()
				}
				if len(ti.Shape) > 1 {
					if _, err := tt.Slice(0); err != nil {
						t.Fatalf("Slice(0) of %q: %v", ti.Name, err)
					}
				}
			}
		}
		first := rewrite(t, h, tensors)
		h2, err := Parse(first)
		if err != nil {
			t.Fatalf("parsing a rewritten file: %v", err)
		}
		var tensors2 []Tensor
		for _, ti := range h2.Tensors {
			start := h2.DataOffset + ti.Offset
			tensors2 = append(tensors2, Tensor{TensorInfo: ti, Data: first[start : start+ti.Size]})
		}
		if second := rewrite(t, h2, tensors2); !bytes.Equal(first, second) {
			t.Fatalf("rewriting a rewritten file changed it")
		}
	})
}

// rewrite writes h's metadata and tensors to a new file's bytes.
func rewrite(t *testing.T, h *Header, tensors []Tensor) []byte {
	t.Helper()
	infos := make([]TensorInfo, len(tensors))
	for i, tt := range tensors {
		infos[i] = tt.TensorInfo
	}
	var buf bytes.Buffer
	w, err := NewWriter(&buf, h.Metadata.All(), infos)
	if err != nil {
		t.Fatalf("rewriting a parsed header: %v", err)
	}
	for _, tt := range tensors {
		if err := w.WriteTensor(tt.Name, tt.Data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
