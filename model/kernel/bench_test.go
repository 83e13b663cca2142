package kernel_test

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"

	"github.com/moegrid/moegrid/model/kernel"
)

// BenchmarkMatMul measures MatMul on the weight shapes of the hot path. The
// bytes per operation are the weight bytes read, so the MB/s column is the
// weight-streaming rate: compare it with BenchmarkMemRead, the rate at which
// this machine reads memory, to see how close a decode step (1 row, bound by
// memory) comes to it. Shapes are W [rows, cols] (PyTorch [out, in]).
func BenchmarkMatMul(b *testing.B) {
	shapes := []struct {
		name       string
		rows, cols int
	}{
		{"W4096x1024", 4096, 1024},
		{"small/w1_w3_3584x1024", 3584, 1024}, // small preset gate_proj/up_proj
		{"small/w2_1024x3584", 1024, 3584},    // small preset down_proj
	}
	for _, mode := range []struct {
		format  kernel.Format
		compute kernel.Compute
	}{{kernel.F32, kernel.ComputeExact}, {kernel.BF16, kernel.ComputeExact}, {kernel.BF16, kernel.ComputeBF16}} {
		if err := kernel.SetCompute(mode.compute); err != nil {
			continue
		}
		dtype := mode.format
		for _, s := range shapes {
			w := newTestMatrix(b, rand.New(rand.NewPCG(1, 1)), s.rows, s.cols, dtype)
			for _, rows := range []int{1, 4, 32} {
				b.Run(fmt.Sprintf("%v-%v/%s/rows=%d", dtype, mode.compute, s.name, rows), func(b *testing.B) {
					if err := kernel.SetCompute(mode.compute); err != nil {
						b.Fatal(err)
					}
					defer kernel.SetCompute(kernel.ComputeExact)
					x := randFloats(rand.New(rand.NewPCG(2, 2)), rows*s.cols)
					out := make([]float32, rows*s.rows)
					b.SetBytes(w.m.Bytes())
					for b.Loop() {
						kernel.MatMul(out, x, rows, w.m)
					}
				})
			}
		}
	}
}

// BenchmarkMemRead reads a buffer far larger than any cache on GOMAXPROCS
// goroutines: the memory bandwidth that a decode-step MatMul can approach.
func BenchmarkMemRead(b *testing.B) {
	buf := make([]uint64, 64<<20) // 512 MiB
	for i := range buf {
		buf[i] = uint64(i)
	}
	workers := runtime.GOMAXPROCS(0)
	chunk := (len(buf) + workers - 1) / workers
	sums := make([]uint64, workers)
	b.SetBytes(int64(len(buf)) * 8)
	for b.Loop() {
		var wg sync.WaitGroup
		for w := range workers {
			part := buf[min(w*chunk, len(buf)):min((w+1)*chunk, len(buf))]
			wg.Go(func() {
				var s0, s1, s2, s3 uint64
				for i := 0; i+4 <= len(part); i += 4 {
					s0 += part[i]
					s1 += part[i+1]
					s2 += part[i+2]
					s3 += part[i+3]
				}
				sums[w] = s0 + s1 + s2 + s3
			})
		}
		wg.Wait()
	}
}
