package gguf

import (
	"fmt"
	"strconv"
	"strings"
)

// Scheme is a quantization scheme under the name llama-quantize gives its
// file type: one type for most tensors, with llama.cpp's exceptions for
// some (the output and attention weights, the first and last layers'
// down projections) and the norms and the router left as they are.
type Scheme string

// The schemes whose types moegrid's kernels run.
const (
	SchemeQ8_0   Scheme = "Q8_0"
	SchemeQ4_0   Scheme = "Q4_0"
	SchemeQ4_K_M Scheme = "Q4_K_M"
	SchemeQ5_K_M Scheme = "Q5_K_M"
	SchemeQ6_K   Scheme = "Q6_K"
)

// schemes maps each Scheme to its llama_ftype number (general.file_type)
// and its default tensor type.
var schemes = map[Scheme]struct {
	fileType uint32
	base     TensorType
}{
	SchemeQ8_0:   {7, TypeQ8_0},
	SchemeQ4_0:   {2, TypeQ4_0},
	SchemeQ4_K_M: {15, TypeQ4_K},
	SchemeQ5_K_M: {17, TypeQ5_K},
	SchemeQ6_K:   {18, TypeQ6_K},
}

// ParseScheme returns the scheme named name, case ignored; "Q4_K" and
// "Q5_K" are Q4_K_M and Q5_K_M, as in llama-quantize.
func ParseScheme(name string) (Scheme, error) {
	s := Scheme(strings.ToUpper(name))
	switch s {
	case "Q4_K":
		s = SchemeQ4_K_M
	case "Q5_K":
		s = SchemeQ5_K_M
	}
	if _, ok := schemes[s]; !ok {
		return "", fmt.Errorf("%w: unknown quantization scheme %q (want q8_0, q4_0, q4_k_m, q5_k_m or q6_k)", ErrType, name)
	}
	return s, nil
}

// FileType is the scheme's general.file_type, llama.cpp's llama_ftype.
func (s Scheme) FileType() uint32 { return schemes[s].fileType }

// TensorType is the type llama-quantize (commit c392e50) gives the tensor
// name of shape (GGML order) in a llama-architecture model of layers
// decoder layers and experts experts that has an output.weight; src is
// the tensor's type, kept by the tensors it does not quantize (1-D ones,
// norms, the router). It fails for a tensor whose rows fit none of the
// scheme's types that moegrid runs.
func (s Scheme) TensorType(name string, shape []uint64, src TensorType, layers, experts int) (TensorType, error) {
	sc, ok := schemes[s]
	if !ok {
		return 0, fmt.Errorf("%w: unknown quantization scheme %q", ErrType, s)
	}
	if !strings.HasSuffix(name, "weight") || len(shape) < 2 || strings.Contains(name, "_norm.weight") || strings.Contains(name, "ffn_gate_inp.weight") {
		return src, nil
	}
	t := sc.base
	// moreBits is llama.cpp's use_more_bits: the first and last eighths of
	// the layers and every third one between.
	moreBits := func() bool {
		l := layerOf(name)
		return l < layers/8 || l >= 7*layers/8 || (l-layers/8)%3 == 2
	}
	km := s == SchemeQ4_K_M || s == SchemeQ5_K_M
	switch {
	case name == "output.weight":
		if shape[0]%uint64(t.BlockSize()) != 0 {
			t = TypeQ8_0
		} else if t != TypeQ8_0 {
			t = TypeQ6_K
		}
	case strings.Contains(name, "attn_v.weight"):
		if km && moreBits() {
			t = TypeQ6_K
		}
		if experts == 8 {
			t = TypeQ8_0
		}
	case strings.Contains(name, "attn_k.weight"):
		if experts == 8 {
			t = TypeQ8_0
		}
	case strings.Contains(name, "ffn_down"):
		if km && moreBits() {
			t = TypeQ6_K
		}
	case strings.Contains(name, "attn_output.weight"):
		if experts == 8 && s == SchemeQ4_K_M {
			t = TypeQ5_K
		}
	}
	if shape[0]%uint64(t.BlockSize()) != 0 {
		// llama.cpp falls back to Q5_0, Q5_1 or Q8_0; only the last is a
		// format moegrid runs.
		if t == TypeQ6_K && shape[0]%32 == 0 {
			return TypeQ8_0, nil
		}
		return 0, fmt.Errorf("%w: rows of %d values of %s fit no %s type moegrid runs", ErrType, shape[0], name, s)
	}
	return t, nil
}

// layerOf is the layer of a blk.N.* tensor name, or 0.
func layerOf(name string) int {
	rest, ok := strings.CutPrefix(name, "blk.")
	if !ok {
		return 0
	}
	n, _, _ := strings.Cut(rest, ".")
	l, _ := strconv.Atoi(n)
	return l
}
