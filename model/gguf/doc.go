// Package gguf reads and writes GGUF files, the single-file model format of
// llama.cpp (versions 2 and 3, little-endian).
//
// A GGUF file is a header (magic, version, counts), typed metadata
// key/value pairs, a table of tensor descriptions, and an aligned data
// section holding the tensors. [Parse] validates a whole header against the
// size of its file before anything trusts it: every count is bounded by the
// bytes that remain before a slice is allocated, every tensor's shape, type
// and offset is checked against the data section, and tensors may not
// overlap. A file that lies gets an error wrapping one of this package's
// sentinels, never a huge allocation or a panic.
//
// [OpenFile] maps a file read-only and hands out tensors as views of the
// mapping, so loading copies nothing and a process that touches only some
// experts' byte ranges of a stacked tensor ([Tensor.Slice]) keeps only
// those pages resident. [Open] opens a model split across files named
// NAME-00001-of-0000N.gguf as one [Checkpoint].
//
// The package is written here rather than built on
// github.com/gpustack/gguf-parser-go: that library parses through an
// io.Reader into its own structures to estimate memory use and offers no
// zero-copy views of tensor data over a mapping, no per-slice byte ranges,
// and no writer; moegrid needs all three, plus errors that name exactly
// which count or offset of a hostile file is wrong.
//
// [Writer] and [WriteFile] write GGUF version 3 with the alignment the
// metadata asks for, byte for byte as llama.cpp's own writer does, so that
// moegrid's conversions load in llama.cpp.
//
// For Mixtral as llama.cpp stores it (architecture "llama" with experts),
// [ReadLlamaParams] reads the hyperparameters, [Checkpoint.HFTensor] finds
// a Hugging Face tensor in either expert layout with q and k back in
// Hugging Face row order ([RopeFromGGUF], [RopeToGGUF]), [Scheme] gives
// each tensor the type llama-quantize would, and [Checkpoint.Advise]
// hints the kernel about an expert's byte range.
package gguf
