// Package kernel holds the numeric kernels of the Mixtral forward pass: plain
// functions over flat float32 slices, output first, with the shape in the
// comment, and the weight matrices they multiply.
//
// A weight matrix is a [Matrix] in one storage [Format] (F32, BF16, F16 and
// GGML's block-quantized Q8_0, Q4_0, Q4_K, Q5_K, Q6_K): the one place the
// model's code meets weight formats. [MatMul] and [MatMuls] split a product
// over the process's worker pool ([For]); each format multiplies register
// tiles of input rows and weight rows on the fastest [Path] the CPU runs
// (AVX-512, AVX2, portable Go; MOEGRID_KERNEL or [UsePath] forces one).
//
// Every kernel computes each output row from its own input row only, in a
// fixed order of operations. The result for a row therefore does not depend
// on which other rows share the batch, on the tile it falls in, or on how
// the work is split across goroutines: a token computed alone, in a batch of
// 16, in-process or on a remote expert node gives the same bits. Tests
// depend on this property; keep it when making kernels faster.
package kernel
