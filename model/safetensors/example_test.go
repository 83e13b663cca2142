package safetensors_test

import (
	"encoding/binary"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"

	"github.com/moegrid/moegrid/model/safetensors"
)

// bf16 encodes vs as little-endian bfloat16.
func bf16(vs ...float32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint16(b, safetensors.Float32ToBF16(v))
	}
	return b
}

// An expert node opens a sharded checkpoint for its own experts only: the
// shard holding the router and norms is never opened.
func ExampleOpenCheckpoint() {
	dir, err := os.MkdirTemp("", "checkpoint")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// Write a two-shard checkpoint and its index.
	shards := [][]safetensors.WriteTensor{
		{
			{Name: "model.layers.0.block_sparse_moe.gate.weight", DType: safetensors.BF16, Shape: []int{2, 2}, Data: bf16(1, 2, 3, 4)},
			{Name: "model.norm.weight", DType: safetensors.BF16, Shape: []int{2}, Data: bf16(1, 1)},
		},
		{
			{Name: "model.layers.0.block_sparse_moe.experts.0.w1.weight", DType: safetensors.BF16, Shape: []int{1, 2}, Data: bf16(0.5, -1)},
			{Name: "model.layers.0.block_sparse_moe.experts.1.w1.weight", DType: safetensors.BF16, Shape: []int{1, 2}, Data: bf16(2, 3)},
		},
	}
	weightMap := map[string]string{}
	var total int64
	for i, tensors := range shards {
		file := safetensors.ShardFileName(i+1, len(shards))
		if err := safetensors.WriteFile(filepath.Join(dir, file), tensors, map[string]string{"format": "pt"}); err != nil {
			log.Fatal(err)
		}
		for _, t := range tensors {
			weightMap[t.Name] = file
			total += int64(len(t.Data))
		}
	}
	if err := safetensors.WriteIndex(filepath.Join(dir, safetensors.IndexFileName), total, weightMap); err != nil {
		log.Fatal(err)
	}

	// Load expert 0 only.
	ckpt, err := safetensors.OpenCheckpoint(dir, func(name string) bool {
		return strings.Contains(name, ".experts.0.")
	})
	if err != nil {
		log.Fatal(err)
	}
	defer ckpt.Close()
	for _, name := range ckpt.Names() {
		t, err := ckpt.Tensor(name)
		if err != nil {
			log.Fatal(err)
		}
		w := make([]float32, t.NumElements())
		if err := t.ToFloat32(w); err != nil {
			log.Fatal(err)
		}
		fmt.Println(name, t.DType, t.Shape, w)
	}
	fmt.Println("bytes:", ckpt.MappedBytes())
	_, err = ckpt.Tensor("model.norm.weight")
	fmt.Println(err)
	// Output:
	// model.layers.0.block_sparse_moe.experts.0.w1.weight BF16 [1 2] [0.5 -1]
	// bytes: 4
	// safetensors: tensor not found: "model.norm.weight"
}
