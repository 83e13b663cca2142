package model

import (
	"errors"
	"fmt"
	"slices"

	"github.com/moegrid/moegrid/model/kernel"
	"github.com/moegrid/moegrid/model/safetensors"
)

// ErrWeights is wrapped by errors about a checkpoint's tensors: missing,
// wrongly shaped or of an unsupported dtype.
var ErrWeights = errors.New("model: bad weights")

// tensorSource is where weights come from: an open checkpoint.
type tensorSource interface {
	Tensor(name string) (safetensors.Tensor, error)
}

// matrix maps the tensor name as a [rows, cols] matrix in its stored
// format, without copying.
func matrix(src tensorSource, name string, rows, cols int) (kernel.Matrix, error) {
	t, err := src.Tensor(name)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrWeights, err)
	}
	if !slices.Equal(t.Shape, []int{rows, cols}) {
		return nil, fmt.Errorf("%w: %s has shape %v, want [%d %d]", ErrWeights, name, t.Shape, rows, cols)
	}
	// A safetensors dtype names the float format of the same name.
	m, err := kernel.NewMatrix(kernel.Format(t.DType), rows, cols, t.Data)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrWeights, name, err)
	}
	return m, nil
}

// vector reads a 1-D tensor of n elements, widened to float32.
func vector(src tensorSource, name string, n int) ([]float32, error) {
	t, err := src.Tensor(name)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrWeights, err)
	}
	if !slices.Equal(t.Shape, []int{n}) {
		return nil, fmt.Errorf("%w: %s has shape %v, want [%d]", ErrWeights, name, t.Shape, n)
	}
	v := make([]float32, n)
	if err := t.ToFloat32(v); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrWeights, name, err)
	}
	return v, nil
}

// Layer holds the non-expert weights of one decoder layer.
type Layer struct {
	InputNorm         []float32     // [H]
	PostAttentionNorm []float32     // [H]
	Q                 kernel.Matrix // [nh·d, H]
	K                 kernel.Matrix // [nkv·d, H]
	V                 kernel.Matrix // [nkv·d, H]
	O                 kernel.Matrix // [H, nh·d]
	Gate              kernel.Matrix // [E, H], the router
}

func loadLayer(src tensorSource, c *Config, l int) (Layer, error) {
	var (
		ly  Layer
		err error
		H   = c.HiddenSize
	)
	load := func(dst *kernel.Matrix, suffix string, rows, cols int) {
		if err == nil {
			*dst, err = matrix(src, layerTensor(l, suffix), rows, cols)
		}
	}
	load(&ly.Q, "self_attn.q_proj.weight", c.QDim(), H)
	load(&ly.K, "self_attn.k_proj.weight", c.KVDim(), H)
	load(&ly.V, "self_attn.v_proj.weight", c.KVDim(), H)
	load(&ly.O, "self_attn.o_proj.weight", H, c.QDim())
	load(&ly.Gate, "block_sparse_moe.gate.weight", c.NumLocalExperts, H)
	if err != nil {
		return Layer{}, err
	}
	if ly.InputNorm, err = vector(src, layerTensor(l, "input_layernorm.weight"), H); err != nil {
		return Layer{}, err
	}
	if ly.PostAttentionNorm, err = vector(src, layerTensor(l, "post_attention_layernorm.weight"), H); err != nil {
		return Layer{}, err
	}
	return ly, nil
}

// Expert holds the SwiGLU feed-forward weights of one expert in one layer.
type Expert struct {
	W1 kernel.Matrix // gate_proj [F, H]
	W2 kernel.Matrix // down_proj [H, F]
	W3 kernel.Matrix // up_proj [F, H]
}

func loadExpert(src tensorSource, c *Config, layer, expert int) (*Expert, error) {
	names := ExpertTensors(layer, expert)
	H, F := c.HiddenSize, c.IntermediateSize
	var e Expert
	var err error
	if e.W1, err = matrix(src, names[0], F, H); err != nil {
		return nil, err
	}
	if e.W2, err = matrix(src, names[1], H, F); err != nil {
		return nil, err
	}
	if e.W3, err = matrix(src, names[2], F, H); err != nil {
		return nil, err
	}
	return &e, nil
}

// Bytes is the stored size of the expert's weights.
func (e *Expert) Bytes() int64 { return e.W1.Bytes() + e.W2.Bytes() + e.W3.Bytes() }

// Forward: out[t] = W2 · (silu(W1 · x[t]) ⊙ (W3 · x[t])) for each row t of
// x [rows, H]; out is [rows, H].
func (e *Expert) Forward(out, x []float32, rows int) {
	F := e.W1.Rows()
	gate := make([]float32, rows*F)
	up := make([]float32, rows*F)
	kernel.MatMuls(x, rows, kernel.Product{Out: gate, W: e.W1}, kernel.Product{Out: up, W: e.W3})
	kernel.SiLUMul(gate, gate, up)
	kernel.MatMul(out, gate, rows, e.W2)
}
