package gguf_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/moegrid/moegrid/model/gguf"
	"github.com/moegrid/moegrid/model/kernel"
)

// A quantized matrix written to a GGUF file and multiplied straight from
// the file's mapping. The product is that of the dequantized weights:
// 31/32 as Q8_0 stores it.
func Example() {
	dir, err := os.MkdirTemp("", "gguf")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	const rows, cols = 2, 32
	w := make([]float32, rows*cols)
	for i := range w {
		w[i] = float32(i%cols) / cols
	}
	data, err := kernel.Quantize(kernel.Q8_0, rows, cols, w)
	if err != nil {
		log.Fatal(err)
	}
	path := filepath.Join(dir, "m.gguf")
	err = gguf.WriteFile(path,
		[]gguf.KV{{Key: "general.name", Value: gguf.String("example")}},
		[]gguf.Tensor{{TensorInfo: gguf.TensorInfo{Name: "w", Type: gguf.TypeQ8_0, Shape: []uint64{cols, rows}}, Data: data}})
	if err != nil {
		log.Fatal(err)
	}

	c, err := gguf.Open(path)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	t, err := c.Tensor("w")
	if err != nil {
		log.Fatal(err)
	}
	m, err := t.Matrix()
	if err != nil {
		log.Fatal(err)
	}
	x := make([]float32, cols)
	x[cols-1] = 1
	out := make([]float32, rows)
	m.MulRows(out, x, 1, 0, rows)
	fmt.Println(m.Format(), m.Rows(), m.Cols(), m.Bytes(), out)
	// Output: Q8_0 2 32 68 [0.9689331 0.9689331]
}
