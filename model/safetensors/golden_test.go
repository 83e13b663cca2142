package safetensors

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
)

// TestReferenceFiles checks Write against the bytes that the reference
// implementation writes, and reads what it reads (see testdata/README.md).
func TestReferenceFiles(t *testing.T) {
	f32s := f32Bytes(0, 1, 2, 3, 4, 5)
	tests := []struct {
		file     string
		tensors  []WriteTensor // nil: a file to read only
		metadata map[string]string
		names    []string
	}{
		{"reference_f32.safetensors", []WriteTensor{{"attn.0", F32, []int{1, 2, 3}, f32s}}, nil, []string{"attn.0"}},
		{"reference_aligned.safetensors", []WriteTensor{{"attn0", F32, []int{1, 1, 2, 3}, f32s}}, nil, []string{"attn0"}},
		{"reference_empty.safetensors", []WriteTensor{}, nil, []string{}},
		{"reference_empty_metadata.safetensors", []WriteTensor{}, map[string]string{"framework": "pt"}, []string{}},
		{"reference_unpadded_i32.safetensors", nil, nil, []string{"test"}},
		{"reference_leading_space.safetensors", nil, nil, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := filepath.Join("testdata", tt.file)
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if tt.tensors != nil {
				var buf bytes.Buffer
				if err := Write(&buf, tt.tensors, tt.metadata); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(buf.Bytes(), want) {
					t.Errorf("Write =\n%q\nwant\n%q", buf.Bytes(), want)
				}
			}
			f, err := OpenFile(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if got := f.Names(); !slices.Equal(got, tt.names) {
				t.Errorf("Names = %q, want %q", got, tt.names)
			}
			if got := f.Metadata(); !reflect.DeepEqual(got, tt.metadata) {
				t.Errorf("Metadata = %v, want %v", got, tt.metadata)
			}
			for _, w := range tt.tensors {
				got, err := f.Tensor(w.Name)
				if err != nil || !bytes.Equal(got.Data, w.Data) || !slices.Equal(got.Shape, w.Shape) {
					t.Errorf("Tensor(%q) = %+v, %v", w.Name, got, err)
				}
				if v, err := got.Float32s(); err != nil || !slices.Equal(v, []float32{0, 1, 2, 3, 4, 5}) {
					t.Errorf("Float32s = %v, %v", v, err)
				}
			}
		})
	}
}
