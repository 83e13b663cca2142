package model

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/moegrid/moegrid/model/kernel"
	"github.com/moegrid/moegrid/model/safetensors"
)

// ErrInput is wrapped by errors about a Forward call's input: token ids out
// of the vocabulary, positions past the context, empty inputs.
var ErrInput = errors.New("model: bad input")

// Model is the non-expert part of a Mixtral model: embeddings, attention,
// norms, the gates and lm_head. It is read-only after Load and safe for
// concurrent use; the state of a sequence lives in its Cache.
type Model struct {
	Config Config
	Embed  kernel.Matrix // [vocab, H]
	Layers []Layer
	Norm   []float32     // [H]
	LMHead kernel.Matrix // [vocab, H]

	invFreq []float32 // rotary inverse frequencies [d/2]
	closer  io.Closer
}

// Load maps the non-expert weights of the checkpoint in dir (config.json and
// safetensors files), or of the GGUF checkpoint dir names (see IsGGUF).
// Expert weights are left alone: load them with LoadExperts where they are
// needed.
func Load(dir string) (*Model, error) {
	if IsGGUF(dir) {
		return loadGGUF(dir)
	}
	cfg, err := LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	ck, err := safetensors.OpenCheckpoint(dir, func(name string) bool {
		_, _, expert := ParseExpertTensor(name)
		return !expert
	})
	if err != nil {
		return nil, fmt.Errorf("model: open checkpoint: %w", err)
	}
	m, err := newModel(ck, cfg)
	if err != nil {
		ck.Close()
		return nil, err
	}
	m.closer = ck
	return m, nil
}

func newModel(src tensorSource, cfg Config) (*Model, error) {
	m := &Model{Config: cfg, invFreq: kernel.RoPEFreqs(cfg.HeadDim(), cfg.RopeTheta)}
	var err error
	H, V := cfg.HiddenSize, cfg.VocabSize
	if m.Embed, err = matrix(src, EmbedTensor, V, H); err != nil {
		return nil, err
	}
	if m.Norm, err = vector(src, NormTensor, H); err != nil {
		return nil, err
	}
	if cfg.TieWordEmbeddings {
		m.LMHead = m.Embed
	} else if m.LMHead, err = matrix(src, LMHeadTensor, V, H); err != nil {
		return nil, err
	}
	m.Layers = make([]Layer, cfg.NumHiddenLayers)
	for l := range m.Layers {
		if m.Layers[l], err = loadLayer(src, &cfg, l); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Close releases the checkpoint mapping; the model must not be used after.
func (m *Model) Close() error {
	if m.closer == nil {
		return nil
	}
	return m.closer.Close()
}

// Cache is the key/value cache of one sequence: for every layer the rotated
// keys and the values of every token so far. A Cache is used by one Forward
// call at a time.
type Cache struct {
	keys, values [][]float32 // [layer][pos·kvDim]
	n            int
	kvDim        int
}

// NewCache returns an empty cache for a sequence.
func (m *Model) NewCache() *Cache {
	return &Cache{
		keys:   make([][]float32, m.Config.NumHiddenLayers),
		values: make([][]float32, m.Config.NumHiddenLayers),
		kvDim:  m.Config.KVDim(),
	}
}

// Len is the number of tokens cached, which is also the position of the next
// token.
func (c *Cache) Len() int { return c.n }

// Bytes is the memory the cache holds.
func (c *Cache) Bytes() int64 { return int64(len(c.keys)) * 2 * int64(c.n*c.kvDim) * 4 }

// Truncate drops every token from position n on, and whatever a failed
// step left past it.
func (c *Cache) Truncate(n int) {
	n = min(n, c.n)
	for l := range c.keys {
		c.keys[l] = c.keys[l][:n*c.kvDim]
		c.values[l] = c.values[l][:n*c.kvDim]
	}
	c.n = n
}

// Input is one sequence's part of a Forward step: new tokens that continue
// the sequence whose cache is given.
type Input struct {
	Cache  *Cache
	Tokens []int
	// AllLogits asks for the logits after every token instead of only after
	// the last.
	AllLogits bool
}

// Route is the gate's choice for one token in one layer: the experts in
// descending weight order and their renormalised weights.
type Route struct {
	Experts []int
	Weights []float32
}

// Result is the outcome of a Forward step.
type Result struct {
	// Logits[i] is [n, vocab] for Inputs[i]: n = len(Tokens) with
	// AllLogits, else 1 (the last token).
	Logits [][]float32
	// Routes[layer][row] is the route of every token of the step, rows
	// numbered through the inputs in order.
	Routes [][]Route
}

// rowInfo locates one token of a step.
type rowInfo struct {
	cache *Cache
	pos   int
}

// Forward runs one step of the decoder over the new tokens of every input,
// appending their keys and values to the inputs' caches, calling experts
// once per layer with every expert the step's tokens chose. If it fails, every
// cache is left as it was.
func (m *Model) Forward(ctx context.Context, experts Experts, inputs []Input) (*Result, error) {
	cfg := &m.Config
	var rows []rowInfo
	for i, in := range inputs {
		if len(in.Tokens) == 0 {
			return nil, fmt.Errorf("%w: input %d has no tokens", ErrInput, i)
		}
		if end := in.Cache.Len() + len(in.Tokens); end > cfg.MaxPositionEmbeddings {
			return nil, fmt.Errorf("%w: input %d reaches position %d, past max_position_embeddings %d", ErrInput, i, end, cfg.MaxPositionEmbeddings)
		}
		for j, id := range in.Tokens {
			if id < 0 || id >= cfg.VocabSize {
				return nil, fmt.Errorf("%w: input %d: token id %d outside the vocabulary [0, %d)", ErrInput, i, id, cfg.VocabSize)
			}
			rows = append(rows, rowInfo{cache: in.Cache, pos: in.Cache.Len() + j})
		}
	}
	for i := range inputs {
		for j := range i {
			if inputs[i].Cache == inputs[j].Cache {
				return nil, fmt.Errorf("%w: inputs %d and %d share a cache", ErrInput, j, i)
			}
		}
	}
	saved := make([]int, len(inputs))
	for i, in := range inputs {
		saved[i] = in.Cache.Len()
	}
	res, err := m.forward(ctx, experts, inputs, rows)
	if err != nil {
		for i, in := range inputs {
			in.Cache.Truncate(saved[i])
		}
		return nil, err
	}
	return res, nil
}

func (m *Model) forward(ctx context.Context, experts Experts, inputs []Input, rows []rowInfo) (*Result, error) {
	cfg := &m.Config
	H, R := cfg.HiddenSize, len(rows)
	d := cfg.HeadDim()

	x := make([]float32, R*H)
	r := 0
	for _, in := range inputs {
		for _, id := range in.Tokens {
			m.Embed.Row(x[r*H:(r+1)*H], id)
			r++
		}
	}
	cos := make([]float32, R*d/2)
	sin := make([]float32, R*d/2)
	for r, ri := range rows {
		kernel.RoPEAngles(cos[r*d/2:(r+1)*d/2], sin[r*d/2:(r+1)*d/2], m.invFreq, ri.pos)
	}

	res := &Result{Routes: make([][]Route, cfg.NumHiddenLayers)}
	s := newScratch(cfg, R)
	for l := range m.Layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		m.attention(l, x, rows, cos, sin, s)
		routes, err := m.moe(ctx, experts, l, x, s)
		if err != nil {
			return nil, err
		}
		res.Routes[l] = routes
	}
	for _, ri := range rows {
		if ri.pos+1 > ri.cache.n {
			ri.cache.n = ri.pos + 1
		}
	}

	// Logits only for the rows that asked for them.
	r = 0
	for _, in := range inputs {
		first, n := r, len(in.Tokens)
		if !in.AllLogits {
			first, n = r+len(in.Tokens)-1, 1
		}
		h := make([]float32, n*H)
		kernel.RMSNorm(h, x[first*H:(first+n)*H], m.Norm, cfg.RMSNormEps)
		logits := make([]float32, n*cfg.VocabSize)
		kernel.MatMul(logits, h, n, m.LMHead)
		res.Logits = append(res.Logits, logits)
		r += len(in.Tokens)
	}
	return res, nil
}

// scratch holds a step's temporary activations.
type scratch struct {
	h, q, k, v, attn, o []float32
}

func newScratch(cfg *Config, R int) *scratch {
	H := cfg.HiddenSize
	return &scratch{
		h:    make([]float32, R*H),
		q:    make([]float32, R*cfg.QDim()),
		k:    make([]float32, R*cfg.KVDim()),
		v:    make([]float32, R*cfg.KVDim()),
		attn: make([]float32, R*cfg.QDim()),
		o:    make([]float32, R*H),
	}
}

// attention: x += o_proj(Attn(input_layernorm(x))) for layer l, appending
// the rows' keys and values to their caches.
func (m *Model) attention(l int, x []float32, rows []rowInfo, cos, sin []float32, s *scratch) {
	cfg := &m.Config
	ly := &m.Layers[l]
	R, d, kvDim, qDim := len(rows), cfg.HeadDim(), cfg.KVDim(), cfg.QDim()
	kernel.RMSNorm(s.h, x, ly.InputNorm, cfg.RMSNormEps)
	kernel.MatMuls(s.h, R, kernel.Product{Out: s.q, W: ly.Q}, kernel.Product{Out: s.k, W: ly.K}, kernel.Product{Out: s.v, W: ly.V})
	for r, ri := range rows {
		c, sn := cos[r*d/2:(r+1)*d/2], sin[r*d/2:(r+1)*d/2]
		kernel.RoPE(s.q[r*qDim:(r+1)*qDim], cfg.NumAttentionHeads, d, c, sn)
		kernel.RoPE(s.k[r*kvDim:(r+1)*kvDim], cfg.NumKeyValueHeads, d, c, sn)
		cache := ri.cache
		// Rows of one input are consecutive positions, so appending in row
		// order places each key at its position.
		cache.keys[l] = append(cache.keys[l][:ri.pos*kvDim], s.k[r*kvDim:(r+1)*kvDim]...)
		cache.values[l] = append(cache.values[l][:ri.pos*kvDim], s.v[r*kvDim:(r+1)*kvDim]...)
	}
	// Every (token, KV head) pair attends on its own, so one long sequence
	// spreads over the workers as well as a batch does; the query heads
	// that share a KV head read its cached keys and values once.
	nkv := cfg.NumKeyValueHeads
	kernel.For(R*nkv, 1, func(lo, hi int) {
		var scores []float32
		for i := lo; i < hi; i++ {
			r, kvh := i/nkv, i%nkv
			scores = m.attendGroup(s.attn[r*qDim:(r+1)*qDim], s.q[r*qDim:(r+1)*qDim], l, kvh, rows[r], scores)
		}
	})
	kernel.MatMul(s.o, s.attn, R, ly.O)
	kernel.Add(x, s.o)
}

// attendGroup: out = softmax(q·Kᵀ·d^-½ over the visible keys) · V for the
// query heads of one token that share KV head kvh, reading the keys and
// values of that head at positions up to and including the token's own
// from its cache. q and out are the token's [heads, d] rows; scores is
// scratch, returned for reuse.
func (m *Model) attendGroup(out, q []float32, l, kvh int, ri rowInfo, scores []float32) []float32 {
	cfg := &m.Config
	d, kvDim, g := cfg.HeadDim(), cfg.KVDim(), cfg.QueriesPerKV()
	first := 0
	if w := cfg.SlidingWindow; w != nil {
		first = max(0, ri.pos-*w+1)
	}
	keys, values := ri.cache.keys[l], ri.cache.values[l]
	scale := float32(1 / math.Sqrt(float64(d)))
	base := first*kvDim + kvh*d
	heads := out[kvh*g*d : (kvh+1)*g*d]
	return kernel.Attend(heads, q[kvh*g*d:(kvh+1)*g*d], g, d, keys[base:], values[base:], kvDim, ri.pos+1-first, scale, scores)
}

// moe: x += MoE(post_attention_layernorm(x)) for layer l; returns the routes.
func (m *Model) moe(ctx context.Context, experts Experts, l int, x []float32, s *scratch) ([]Route, error) {
	cfg := &m.Config
	ly := &m.Layers[l]
	H, E, k := cfg.HiddenSize, cfg.NumLocalExperts, cfg.NumExpertsPerTok
	R := len(x) / H
	kernel.RMSNorm(s.h, x, ly.PostAttentionNorm, cfg.RMSNormEps)
	gate := make([]float32, R*E)
	kernel.MatMul(gate, s.h, R, ly.Gate)

	routes := make([]Route, R)
	members := make([][]int, E) // rows routed to each expert
	for r := range R {
		routes[r] = route(gate[r*E:(r+1)*E], k)
		for _, e := range routes[r].Experts {
			members[e] = append(members[e], r)
		}
	}
	var batches []ExpertBatch
	for e, rs := range members {
		if len(rs) == 0 {
			continue
		}
		b := ExpertBatch{Expert: e, Rows: len(rs), In: make([]float32, len(rs)*H), Out: make([]float32, len(rs)*H)}
		for i, r := range rs {
			copy(b.In[i*H:(i+1)*H], s.h[r*H:(r+1)*H])
		}
		batches = append(batches, b)
	}
	if err := experts.Forward(ctx, l, batches); err != nil {
		return nil, fmt.Errorf("layer %d experts: %w", l, err)
	}
	// Sum in ascending expert order into zeros, as Hugging Face's index_add_
	// does, then add the residual.
	moe := s.o
	clear(moe)
	for _, b := range batches {
		for i, r := range members[b.Expert] {
			kernel.AddScaled(moe[r*H:(r+1)*H], weightOf(routes[r], b.Expert), b.Out[i*H:(i+1)*H])
		}
	}
	kernel.Add(x, moe)
	return routes, nil
}

// route applies softmax to the gate logits (in place), picks the k most
// probable experts (the lower index first on ties) and renormalises their
// probabilities to sum to one.
func route(logits []float32, k int) Route {
	kernel.Softmax(logits)
	rt := Route{Experts: make([]int, 0, k), Weights: make([]float32, 0, k)}
	var sum float32
	for range k {
		best := -1
		for e, p := range logits {
			if best >= 0 && p <= logits[best] {
				continue
			}
			taken := false
			for _, t := range rt.Experts {
				taken = taken || t == e
			}
			if !taken {
				best = e
			}
		}
		rt.Experts = append(rt.Experts, best)
		rt.Weights = append(rt.Weights, logits[best])
		sum += logits[best]
	}
	for i := range rt.Weights {
		rt.Weights[i] /= sum
	}
	return rt
}

func weightOf(rt Route, expert int) float32 {
	for i, e := range rt.Experts {
		if e == expert {
			return rt.Weights[i]
		}
	}
	return 0
}
