// Package safetensors reads and writes the safetensors tensor format and the
// Hugging Face checkpoint layouts built on it: a single model.safetensors file
// or shards named by a model.safetensors.index.json.
//
// A safetensors file is an 8-byte little-endian header length N, N bytes of
// UTF-8 JSON header, and the raw little-endian tensor data. The header maps
// each tensor name to its dtype, shape and data_offsets (relative to byte
// 8+N); an optional "__metadata__" entry holds string key/value pairs.
//
// Files are memory-mapped read-only on Unix (and read into memory elsewhere),
// so opening a multi-gigabyte shard costs no I/O until a tensor's bytes are
// touched. [OpenCheckpoint] takes a filter so that a process can load a
// subset of a model: an expert node asks only for its experts' weights and
// never opens the shards that hold none of them; a router asks for
// everything but the experts.
//
// Every size and offset in a header is untrusted: [ParseHeader] checks them
// all before any tensor is handed out, and never panics on bad input. It is
// stricter than the JSON grammar requires (duplicate keys, unknown fields and
// non-integer numbers are errors) and on one point more lenient than the
// reference Rust implementation: gaps between tensors' data, and bytes after
// the last tensor, are allowed, while overlapping tensors are not. Files that
// this package writes are contiguous and accepted by the reference reader.
//
// Tensor data returned by [File.Tensor] and [Checkpoint.Tensor] aliases the
// mapping: it is read-only (writing to it faults), and it must not be used
// after the File or Checkpoint is closed.
package safetensors
