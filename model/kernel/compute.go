package kernel

import (
	"fmt"
	"sync"

	"github.com/moegrid/moegrid/model/safetensors"
)

// Compute names how matrix products treat their float32 activations.
type Compute string

const (
	// ComputeExact keeps activations in float32: a product is exactly the
	// stored weights' value, widened, times the activations, with float32
	// accumulation. The default, and what the reference tests check.
	ComputeExact Compute = "exact"
	// ComputeBF16 rounds the activations of products with BF16 weights to
	// bfloat16 and uses the AVX-512 BF16 dot product, as llama.cpp runs
	// BF16 models: about twice the arithmetic rate, at the cost of
	// rounding the activations (BENCHMARKS.md gives its measured error).
	// Products with other weight formats stay exact. Every node of a
	// cluster must run the same mode.
	ComputeBF16 Compute = "bf16"
	// ComputeInt8 quantizes the activations of products with
	// block-quantized weights (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K) to 8 bits,
	// 32 to a float32 scale (256, a super-block, for the K formats, as
	// llama.cpp's Q8_K), and multiplies them with integer dot
	// products, as llama.cpp runs such models: several times fewer
	// instructions per weight, at the cost of rounding the activations
	// (BENCHMARKS.md gives its measured error). Products with float
	// weights stay exact. Every path gives the same bits, so a cluster
	// may mix CPUs, but every node must run the same mode.
	ComputeInt8 Compute = "int8"
)

// compute is the process's mode; SetCompute changes it.
var compute = ComputeExact

// SetCompute sets the compute mode of every later matrix product in the
// process. It fails if this CPU cannot run the mode. Like UsePath it must
// not be called while kernels run: call it at start-up.
func SetCompute(c Compute) error {
	switch c {
	case ComputeExact:
	case ComputeBF16:
		if !hasBF16Dot || kernels.path != PathAVX512 {
			return fmt.Errorf("kernel: compute mode bf16 needs the AVX-512 BF16 instructions (kernel path %s)", kernels.path)
		}
	case ComputeInt8:
		if !hasAVX2 {
			return fmt.Errorf("kernel: compute mode int8 needs AVX2, FMA and F16C")
		}
	default:
		return fmt.Errorf("kernel: unknown compute mode %q (want exact, bf16 or int8)", c)
	}
	compute = c
	return nil
}

// CurrentCompute is the process's compute mode.
func CurrentCompute() Compute { return compute }

// bf16Input is implemented by matrices that multiply bfloat16 inputs in
// the BF16 compute mode.
type bf16Input interface {
	mulRowsBF16(out []float32, xb []uint16, n, lo, hi int)
}

// roundBF16 rounds x to bfloat16, to nearest with ties to even as the
// conversion instructions do, into a pooled buffer.
func roundBF16(x []float32) *[]uint16 {
	b := getHalfScratch(len(x))
	for i, v := range x {
		(*b)[i] = safetensors.Float32ToBF16(v)
	}
	return b
}

var halfPool sync.Pool

func getHalfScratch(n int) *[]uint16 {
	if b, ok := halfPool.Get().(*[]uint16); ok && cap(*b) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]uint16, n)
	return &b
}

func putHalfScratch(b *[]uint16) { halfPool.Put(b) }
