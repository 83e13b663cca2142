package safetensors

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"
)

// pattern returns n deterministic bytes that depend on seed.
func pattern(seed string, n int) []byte {
	b := make([]byte, n)
	h := uint32(2166136261)
	for _, c := range []byte(seed) {
		h = (h ^ uint32(c)) * 16777619
	}
	for i := range b {
		h = h*1664525 + 1013904223
		b[i] = byte(h >> 24)
	}
	return b
}

// tensorOf returns a WriteTensor with pattern data of the right size.
func tensorOf(name string, d DType, shape ...int) WriteTensor {
	size, _ := byteSize(d, shape)
	return WriteTensor{Name: name, DType: d, Shape: shape, Data: pattern(name, int(size))}
}

func TestRoundTrip(t *testing.T) {
	halves := func(f func(float32) uint16, vs ...float32) []byte {
		var b []byte
		for _, v := range vs {
			b = append(b, u16Bytes(f(v))...)
		}
		return b
	}
	vals := []float32{0, 1, -1.5, 3.25, 1024, -0.0078125}
	tests := []struct {
		name     string
		tensors  []WriteTensor
		metadata map[string]string
		floats   map[string][]float32 // expected ToFloat32 results
	}{
		{"empty", nil, nil, nil},
		{"metadata only", nil, map[string]string{"format": "pt", "a<b>&c": "\u2028é\x01"}, nil},
		{"F32", []WriteTensor{{"w", F32, []int{2, 3}, f32Bytes(vals...)}}, nil,
			map[string][]float32{"w": vals}},
		{"BF16", []WriteTensor{{"w", BF16, []int{3, 2}, halves(Float32ToBF16, vals...)}}, nil,
			map[string][]float32{"w": vals}},
		{"F16", []WriteTensor{{"w", F16, []int{6}, halves(Float32ToF16, vals...)}}, nil,
			map[string][]float32{"w": vals}},
		{"scalars", []WriteTensor{
			{"s32", F32, []int{}, f32Bytes(7)},
			{"sbf", BF16, []int{}, halves(Float32ToBF16, -2)},
			{"sf16", F16, nil, halves(Float32ToF16, 0.5)},
		}, map[string]string{"k": "v"},
			map[string][]float32{"s32": {7}, "sbf": {-2}, "sf16": {0.5}}},
		{"mixed dtypes stay aligned", []WriteTensor{
			tensorOf("a.bool", BOOL, 3),
			tensorOf("b.bf16", BF16, 3, 1),
			tensorOf("c.f32", F32, 5),
			tensorOf("d.u8", U8, 1),
			tensorOf("e.f64", F64, 2, 2),
			tensorOf("f.f16", F16, 3),
			tensorOf("g.i64", I64, 1),
			tensorOf("h.empty", F32, 0, 4),
			tensorOf("i.f8", F8E4M3, 7),
		}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "model.safetensors")
			if err := WriteFile(path, tt.tensors, tt.metadata); err != nil {
				t.Fatal(err)
			}
			f, err := OpenFile(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if f.Path() != path {
				t.Errorf("Path = %q", f.Path())
			}
			var names []string
			for _, w := range tt.tensors {
				names = append(names, w.Name)
			}
			slices.Sort(names)
			if got := f.Names(); !slices.Equal(got, names) {
				t.Errorf("Names = %q, want %q", got, names)
			}
			wantMD := tt.metadata
			if len(wantMD) == 0 {
				wantMD = nil
			}
			if got := f.Metadata(); !reflect.DeepEqual(got, wantMD) {
				t.Errorf("Metadata = %q, want %q", got, wantMD)
			}
			for _, w := range tt.tensors {
				got, err := f.Tensor(w.Name)
				if err != nil {
					t.Fatal(err)
				}
				if got.Name != w.Name || got.DType != w.DType || len(got.Shape) != len(w.Shape) ||
					!slices.Equal(got.Shape, append([]int{}, w.Shape...)) || !bytes.Equal(got.Data, w.Data) {
					t.Errorf("Tensor(%q) = %+v, want %+v", w.Name, got, w)
				}
				if got.Shape == nil {
					t.Errorf("Tensor(%q).Shape is nil, want empty", w.Name)
				}
				if cap(got.Data) != len(got.Data) {
					t.Errorf("Tensor(%q).Data has spare capacity %d into its neighbour", w.Name, cap(got.Data)-len(got.Data))
				}
				if len(got.Data) > 0 && uintptr(unsafePointer(got.Data))%uintptr(w.DType.Size()) != 0 {
					t.Errorf("Tensor(%q) of %s is misaligned", w.Name, w.DType)
				}
				if info, ok := f.Info(w.Name); !ok || info.Size() != int64(len(w.Data)) {
					t.Errorf("Info(%q) = %+v, %v", w.Name, info, ok)
				}
				if want, ok := tt.floats[w.Name]; ok {
					dst := make([]float32, got.NumElements())
					if err := got.ToFloat32(dst); err != nil || !slices.Equal(dst, want) {
						t.Errorf("Tensor(%q).ToFloat32 = %v, %v; want %v", w.Name, dst, err, want)
					}
				}
			}
			if _, err := f.Tensor("missing"); !errors.Is(err, ErrNotFound) {
				t.Errorf(`Tensor("missing") = %v; want ErrNotFound`, err)
			}
		})
	}
}

func TestTensorShapeIsACopy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := WriteFile(path, []WriteTensor{tensorOf("w", F32, 2, 3)}, nil); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a, _ := f.Tensor("w")
	a.Shape[0] = 99
	b, _ := f.Tensor("w")
	if b.Shape[0] != 2 {
		t.Errorf("changing a returned shape changed the file's: %v", b.Shape)
	}
}

func TestFileClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := WriteFile(path, []WriteTensor{tensorOf("w", F32, 64)}, nil); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Tensor calls race with Close: each either succeeds or reports
	// ErrClosed (their data is not touched, it may be unmapped).
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				if _, err := f.Tensor("w"); err != nil && !errors.Is(err, ErrClosed) {
					t.Errorf("Tensor during Close = %v", err)
					return
				}
			}
		})
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if _, err := f.Tensor("w"); !errors.Is(err, ErrClosed) {
		t.Errorf("Tensor after Close = %v; want ErrClosed", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if names := f.Names(); !slices.Equal(names, []string{"w"}) {
		t.Errorf("Names after Close = %q", names)
	}
}

func TestFileConcurrentReads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	var ws []WriteTensor
	for _, n := range []string{"a", "b", "c", "d"} {
		ws = append(ws, tensorOf(n, BF16, 16, 8))
	}
	if err := WriteFile(path, ws, nil); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			dst := make([]float32, 128)
			for i := range 50 {
				w := ws[(g+i)%len(ws)]
				tt, err := f.Tensor(w.Name)
				if err != nil || !bytes.Equal(tt.Data, w.Data) {
					t.Errorf("Tensor(%q) = %v", w.Name, err)
					return
				}
				if err := tt.ToFloat32(dst); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestOpenFileErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		path string
		want error
	}{
		{"missing", filepath.Join(dir, "nope.safetensors"), os.ErrNotExist},
		{"zero length", write("zero", nil), ErrHeader},
		{"seven bytes", write("seven", make([]byte, 7)), ErrHeader},
		{"only a length", write("eight", []byte{2, 0, 0, 0, 0, 0, 0, 0}), ErrHeader},
		{"directory", dir, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := OpenFile(tt.path)
			if err == nil {
				f.Close()
				t.Fatal("OpenFile succeeded")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("OpenFile = %v; want %v", err, tt.want)
			}
		})
	}
}

func TestReplaceWhileOpen(t *testing.T) {
	// WriteFile renames over the old file, so an open mapping of it
	// keeps the old contents.
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := WriteFile(path, []WriteTensor{{"x", F32, []int{1}, f32Bytes(1)}}, nil); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := WriteFile(path, []WriteTensor{{"x", F32, []int{1}, f32Bytes(2)}}, nil); err != nil {
		t.Fatal(err)
	}
	x, _ := f.Tensor("x")
	if v, _ := x.Float32s(); v[0] != 1 {
		t.Errorf("old mapping reads %v", v)
	}
	g, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	x, _ = g.Tensor("x")
	if v, _ := x.Float32s(); v[0] != 2 {
		t.Errorf("new file reads %v", v)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}
