package model

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"

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
	// pending is the Partial a step left this sequence's tokens in: their
	// keys and values are in the layers before pending.layer, and only a
	// step that resumes it may use the cache.
	pending *Partial
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
// token. Tokens a Partial holds are not counted until they leave the last
// layer.
func (c *Cache) Len() int { return c.n }

// Bytes is the memory the cache holds.
func (c *Cache) Bytes() int64 { return int64(len(c.keys)) * 2 * int64(c.n*c.kvDim) * 4 }

// Truncate drops every token from position n on, and whatever a failed
// step or a pending Partial left past it.
func (c *Cache) Truncate(n int) {
	n = min(n, c.n)
	for l := range c.keys {
		c.keys[l] = c.keys[l][:n*c.kvDim]
		c.values[l] = c.values[l][:n*c.kvDim]
	}
	c.n = n
	c.pending = nil
}

// cacheMark is what a cache held before a step, for undoing a failed one.
type cacheMark struct {
	lens    []int // len(keys[l]) = len(values[l])
	pending *Partial
}

func (c *Cache) mark() cacheMark {
	lens := make([]int, len(c.keys))
	for l, k := range c.keys {
		lens[l] = len(k)
	}
	return cacheMark{lens: lens, pending: c.pending}
}

func (c *Cache) restore(m cacheMark) {
	for l, n := range m.lens {
		c.keys[l] = c.keys[l][:n]
		c.values[l] = c.values[l][:n]
	}
	c.pending = m.pending
}

// Partial is the state of tokens a step ran through only some of the
// layers (Input.Layers): their hidden states before the next layer. A later
// step continues them (Input.Resume) where they stopped.
type Partial struct {
	tokens    int
	allLogits bool
	layer     int       // the next layer to run
	x         []float32 // hidden states [tokens, H]; never written once made
}

// Layer is the first layer the tokens have still to go through.
func (p *Partial) Layer() int { return p.layer }

// Tokens is the number of tokens the partial holds.
func (p *Partial) Tokens() int { return p.tokens }

// Input is one sequence's part of a Forward step: new tokens that continue
// the sequence whose cache is given, or the tokens of a Partial.
type Input struct {
	Cache  *Cache
	Tokens []int
	// AllLogits asks for the logits after every token instead of only after
	// the last.
	AllLogits bool
	// Layers, if positive, runs the tokens through at most that many layers
	// in this step. Where they stop before the last, the Result holds a
	// Partial for the input instead of logits, and the cache takes no
	// other tokens until a step resumes it. One prompt token's attention
	// over a long context can outweigh a whole step of decoding; a
	// scheduler spreads it over steps this way.
	Layers int
	// Resume, if not nil, continues the tokens of the Partial the cache's
	// last step left, from the layer they stopped at; Tokens and AllLogits
	// must then be empty, the partial's own apply.
	Resume *Partial
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
	// AllLogits, else 1 (the last token); nil where the tokens stopped
	// before the last layer.
	Logits [][]float32
	// Partials[i] holds the tokens of Inputs[i] where they stopped before
	// the last layer; nil where they went through all of them.
	Partials []*Partial
	// Routes[layer][row] is the route of every token of the step, rows
	// numbered through the inputs in order; a zero Route where the token
	// did not run that layer in this step.
	Routes [][]Route
}

// rowInfo locates one token of a step.
type rowInfo struct {
	cache *Cache
	pos   int
}

// span is the layers [from, to) one input's tokens run in a step.
type span struct{ from, to int }

// Forward runs one step of the decoder over the new tokens of every input,
// appending their keys and values to the inputs' caches, calling experts
// once per layer with every expert the step's tokens chose there. If it
// fails, every cache is left as it was.
func (m *Model) Forward(ctx context.Context, experts Experts, inputs []Input) (*Result, error) {
	cfg := &m.Config
	L := cfg.NumHiddenLayers
	var rows []rowInfo
	spans := make([]span, len(inputs))
	for i, in := range inputs {
		if err := m.checkInput(i, in); err != nil {
			return nil, err
		}
		tokens, from := len(in.Tokens), 0
		if in.Resume != nil {
			tokens, from = in.Resume.tokens, in.Resume.layer
		}
		spans[i] = span{from, L}
		if in.Layers > 0 {
			spans[i].to = min(L, from+in.Layers)
		}
		for j := range tokens {
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
	marks := make([]cacheMark, len(inputs))
	for i, in := range inputs {
		marks[i] = in.Cache.mark()
	}
	res, err := m.forward(ctx, experts, inputs, spans, rows)
	if err != nil {
		for i, in := range inputs {
			in.Cache.restore(marks[i])
		}
		return nil, err
	}
	return res, nil
}

// checkInput reports what is wrong with inputs[i], if anything.
func (m *Model) checkInput(i int, in Input) error {
	cfg := &m.Config
	if in.Layers < 0 {
		return fmt.Errorf("%w: input %d asks for %d layers", ErrInput, i, in.Layers)
	}
	if in.Resume != nil {
		switch {
		case len(in.Tokens) > 0 || in.AllLogits:
			return fmt.Errorf("%w: input %d resumes a partial and brings tokens or AllLogits of its own", ErrInput, i)
		case in.Cache.pending != in.Resume:
			return fmt.Errorf("%w: input %d resumes a partial its cache's last step did not leave", ErrInput, i)
		}
		return nil
	}
	if in.Cache.pending != nil {
		return fmt.Errorf("%w: input %d brings tokens to a cache whose partial (%d tokens, from layer %d) was not resumed", ErrInput, i, in.Cache.pending.tokens, in.Cache.pending.layer)
	}
	if len(in.Tokens) == 0 {
		return fmt.Errorf("%w: input %d has no tokens", ErrInput, i)
	}
	if end := in.Cache.Len() + len(in.Tokens); end > cfg.MaxPositionEmbeddings {
		return fmt.Errorf("%w: input %d reaches position %d, past max_position_embeddings %d", ErrInput, i, end, cfg.MaxPositionEmbeddings)
	}
	for _, id := range in.Tokens {
		if id < 0 || id >= cfg.VocabSize {
			return fmt.Errorf("%w: input %d: token id %d outside the vocabulary [0, %d)", ErrInput, i, id, cfg.VocabSize)
		}
	}
	return nil
}

func (m *Model) forward(ctx context.Context, experts Experts, inputs []Input, spans []span, rows []rowInfo) (*Result, error) {
	cfg := &m.Config
	H, R := cfg.HiddenSize, len(rows)
	d := cfg.HeadDim()

	// first[i] is the first row of inputs[i]; first[len(inputs)] = R.
	first := make([]int, len(inputs)+1)
	x := make([]float32, R*H)
	r := 0
	for i, in := range inputs {
		first[i] = r
		if p := in.Resume; p != nil {
			copy(x[r*H:], p.x)
			r += p.tokens
			continue
		}
		for _, id := range in.Tokens {
			m.Embed.Row(x[r*H:(r+1)*H], id)
			r++
		}
	}
	first[len(inputs)] = R
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
		// Where only some rows run layer l, they run it gathered and
		// are put back after.
		active, all := activeRows(l, spans, first)
		if !all && len(active) == 0 {
			res.Routes[l] = make([]Route, R)
			continue
		}
		sub, sc := subBatch{x: x, cos: cos, sin: sin, rows: rows}, s
		if !all {
			sub, sc = gatherRows(active, x, rows, cos, sin, H, d/2), s.view(cfg, len(active))
		}
		m.attention(l, sub.x, sub.rows, sub.cos, sub.sin, sc)
		routes, err := m.moe(ctx, experts, l, sub.x, sc)
		if err != nil {
			return nil, err
		}
		if all {
			res.Routes[l] = routes
			continue
		}
		res.Routes[l] = make([]Route, R)
		for j, r := range active {
			copy(x[r*H:(r+1)*H], sub.x[j*H:(j+1)*H])
			res.Routes[l][r] = routes[j]
		}
	}

	// Logits only for the rows that asked for them, of the inputs that went
	// through every layer; the others are left pending. The rows of all
	// inputs go through the LM head in one product, which reads its
	// weights once a step rather than once an input.
	res.Logits = make([][]float32, len(inputs))
	res.Partials = make([]*Partial, len(inputs))
	var h []float32
	want := make([]int, len(inputs)) // logit rows of inputs[i]
	for i, in := range inputs {
		r0, n := first[i], first[i+1]-first[i]
		allLogits := in.AllLogits
		if p := in.Resume; p != nil {
			allLogits = p.allLogits
		}
		if spans[i].to < cfg.NumHiddenLayers {
			p := &Partial{tokens: n, allLogits: allLogits, layer: spans[i].to, x: slices.Clone(x[r0*H : (r0+n)*H])}
			in.Cache.pending = p
			res.Partials[i] = p
			continue
		}
		in.Cache.pending = nil
		in.Cache.n = rows[r0].pos + n
		if !allLogits {
			r0, n = r0+n-1, 1
		}
		h = slices.Grow(h, n*H)
		h = h[:len(h)+n*H]
		kernel.RMSNorm(h[len(h)-n*H:], x[r0*H:(r0+n)*H], m.Norm, cfg.RMSNormEps)
		want[i] = n
	}
	n := len(h) / H
	logits := make([]float32, n*cfg.VocabSize)
	kernel.MatMul(logits, h, n, m.LMHead)
	for i, k := range want {
		if k > 0 {
			res.Logits[i], logits = logits[:k*cfg.VocabSize:k*cfg.VocabSize], logits[k*cfg.VocabSize:]
		}
	}
	return res, nil
}

// activeRows returns the rows that run layer l, inputs[i]'s being rows
// first[i] to first[i+1] and running the layers of spans[i], or all where
// every row does.
func activeRows(l int, spans []span, first []int) (active []int, all bool) {
	all = true
	for _, sp := range spans {
		all = all && sp.from <= l && l < sp.to
	}
	if all {
		return nil, true
	}
	for i, sp := range spans {
		if sp.from <= l && l < sp.to {
			for r := first[i]; r < first[i+1]; r++ {
				active = append(active, r)
			}
		}
	}
	return active, false
}

// subBatch is the rows of a step that run one layer, gathered.
type subBatch struct {
	x, cos, sin []float32
	rows        []rowInfo
}

// gatherRows copies the hidden states, rotary angles (half of them, in
// each of cos and sin) and places of the rows given.
func gatherRows(rowsOf []int, x []float32, rows []rowInfo, cos, sin []float32, H, half int) subBatch {
	n := len(rowsOf)
	sub := subBatch{x: make([]float32, n*H), cos: make([]float32, n*half), sin: make([]float32, n*half), rows: make([]rowInfo, n)}
	for j, r := range rowsOf {
		copy(sub.x[j*H:(j+1)*H], x[r*H:(r+1)*H])
		copy(sub.cos[j*half:(j+1)*half], cos[r*half:(r+1)*half])
		copy(sub.sin[j*half:(j+1)*half], sin[r*half:(r+1)*half])
		sub.rows[j] = rows[r]
	}
	return sub
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

// view is the scratch of the first R rows.
func (s *scratch) view(cfg *Config, R int) *scratch {
	H, q, kv := cfg.HiddenSize, cfg.QDim(), cfg.KVDim()
	return &scratch{h: s.h[:R*H], q: s.q[:R*q], k: s.k[:R*kv], v: s.v[:R*kv], attn: s.attn[:R*q], o: s.o[:R*H]}
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
