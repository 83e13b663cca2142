// Package kernel holds the numeric kernels of the Mixtral forward pass: plain
// functions over flat float32 slices, output first, with the shape in the
// comment.
//
// Every kernel computes each output row from its own input row only, in a
// fixed order of operations. The result for a row therefore does not depend
// on which other rows share the batch or on how the work is split across
// goroutines: a token computed alone, in a batch of 16, in-process or on a
// remote expert node gives the same bits. Tests depend on this property; keep
// it when making kernels faster.
package kernel
