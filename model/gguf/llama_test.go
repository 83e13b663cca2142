package gguf

import (
	"bytes"
	"errors"
	"path/filepath"
	"reflect"
	"testing"
)

// tinyMixtral is a two-layer, four-expert llama-architecture model:
// metadata and tensors, layer 0's experts stacked, layer 1's one tensor
// per expert (llama.cpp's older layout). Data are distinct per tensor.
func tinyMixtral(t *testing.T) ([]KV, []Tensor) {
	t.Helper()
	p := LlamaParams{
		Architecture: "llama", ContextLength: 256, EmbeddingLength: 32, FeedForwardLength: 64,
		BlockCount: 2, HeadCount: 4, HeadCountKV: 2, HeadDim: 8, ExpertCount: 4, ExpertUsedCount: 2,
		RMSNormEps: 1e-5, RopeFreqBase: 1e6,
	}
	tokens, err := ArrayOf([]string{"<unk>", "<s>", "</s>", "a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	meta := append(p.Metadata(), KV{KeyTokens, tokens}, KV{KeyBOS, Uint32(1)}, KV{KeyEOS, Uint32(2)})
	var ts []Tensor
	add := func(name string, typ TensorType, shape ...uint64) {
		size, err := tensorBytes(typ, shape)
		if err != nil {
			t.Fatal(err)
		}
		d := make([]byte, size)
		for i := range d {
			d[i] = byte(i*31 + len(ts)*7)
		}
		ts = append(ts, Tensor{TensorInfo: TensorInfo{Name: name, Type: typ, Shape: shape}, Data: d})
	}
	add("token_embd.weight", TypeQ8_0, 32, 5)
	add("output_norm.weight", TypeF32, 32)
	add("output.weight", TypeQ6_K, 256, 5)
	for l, stacked := range []bool{true, false} {
		b := "blk." + string(rune('0'+l)) + "."
		add(b+"attn_norm.weight", TypeF32, 32)
		add(b+"attn_q.weight", TypeQ8_0, 32, 32)
		add(b+"attn_k.weight", TypeQ8_0, 32, 16)
		add(b+"attn_v.weight", TypeQ8_0, 32, 16)
		add(b+"attn_output.weight", TypeQ8_0, 32, 32)
		add(b+"ffn_norm.weight", TypeF32, 32)
		add(b+"ffn_gate_inp.weight", TypeF32, 32, 4)
		if stacked {
			add(b+"ffn_gate_exps.weight", TypeQ4_K, 256, 64, 4)
			add(b+"ffn_down_exps.weight", TypeQ8_0, 64, 256, 4)
			add(b+"ffn_up_exps.weight", TypeQ4_K, 256, 64, 4)
			continue
		}
		for e := range 4 {
			s := string(rune('0' + e))
			add(b+"ffn_gate."+s+".weight", TypeQ4_K, 256, 64)
			add(b+"ffn_down."+s+".weight", TypeQ8_0, 64, 256)
			add(b+"ffn_up."+s+".weight", TypeQ4_K, 256, 64)
		}
	}
	return meta, ts
}

func TestReadLlamaParams(t *testing.T) {
	meta, _ := tinyMixtral(t)
	md, err := NewMetadata(meta)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ReadLlamaParams(md)
	if err != nil {
		t.Fatal(err)
	}
	want := LlamaParams{
		Architecture: "llama", VocabSize: 5, ContextLength: 256, EmbeddingLength: 32, FeedForwardLength: 64,
		BlockCount: 2, HeadCount: 4, HeadCountKV: 2, HeadDim: 8, ExpertCount: 4, ExpertUsedCount: 2,
		RMSNormEps: 1e-5, RopeFreqBase: 1e6, BOSTokenID: 1, EOSTokenID: 2,
	}
	if p != want {
		t.Errorf("params\n got %+v\nwant %+v", p, want)
	}
	for _, tc := range []struct {
		name string
		kv   KV
	}{
		{"architecture", KV{KeyArchitecture, String("gpt2")}},
		{"heads", KV{"llama.attention.head_count_kv", Uint32(3)}},
		{"bos", KV{KeyBOS, Uint32(5)}},
		{"eps type", KV{"llama.attention.layer_norm_rms_epsilon", String("1e-5")}},
	} {
		kvs := append([]KV(nil), meta...)
		for i := range kvs {
			if kvs[i].Key == tc.kv.Key {
				kvs[i] = tc.kv
			}
		}
		md, err := NewMetadata(kvs)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ReadLlamaParams(md); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
}

func TestHFTensor(t *testing.T) {
	meta, ts := tinyMixtral(t)
	path := filepath.Join(t.TempDir(), "tiny.gguf")
	if err := WriteFile(path, meta, ts); err != nil {
		t.Fatal(err)
	}
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	byName := map[string]Tensor{}
	for _, tt := range ts {
		byName[tt.Name] = tt
	}
	same := func(hf string, want []byte) {
		t.Helper()
		got, err := c.HFTensor(hf)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Data, want) {
			t.Errorf("%s: data differs", hf)
		}
	}
	same("model.embed_tokens.weight", byName["token_embd.weight"].Data)
	same("lm_head.weight", byName["output.weight"].Data)
	same("model.layers.1.post_attention_layernorm.weight", byName["blk.1.ffn_norm.weight"].Data)
	same("model.layers.0.block_sparse_moe.gate.weight", byName["blk.0.ffn_gate_inp.weight"].Data)
	stacked := byName["blk.0.ffn_down_exps.weight"]
	per := len(stacked.Data) / 4
	same("model.layers.0.block_sparse_moe.experts.2.w2.weight", stacked.Data[2*per:3*per])
	same("model.layers.1.block_sparse_moe.experts.3.w3.weight", byName["blk.1.ffn_up.3.weight"].Data)

	// q and k come back in Hugging Face row order, and RopeToGGUF undoes
	// that.
	for _, tc := range []struct {
		hf, gguf string
		heads    int
	}{{"model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight", 4}, {"model.layers.1.self_attn.k_proj.weight", "blk.1.attn_k.weight", 2}} {
		got, err := c.HFTensor(tc.hf)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(got.Data, byName[tc.gguf].Data) {
			t.Errorf("%s: rows not reordered", tc.hf)
		}
		back, err := RopeToGGUF(got, tc.heads)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back.Data, byName[tc.gguf].Data) {
			t.Errorf("%s: RopeToGGUF does not undo RopeFromGGUF", tc.hf)
		}
	}
	for _, bad := range []string{"model.layers.0.mlp.up_proj.weight", "model.layers.01.input_layernorm.weight", "model.layers.0.block_sparse_moe.experts.9.w1.weight", "nonsense"} {
		if _, err := c.HFTensor(bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
	norm, err := c.HFTensor("model.norm.weight")
	if err != nil {
		t.Fatal(err)
	}
	v, err := norm.Float32s()
	if err != nil || len(v) != 32 {
		t.Fatalf("Float32s: %d values, %v", len(v), err)
	}
}

// TestRopeRowsMatchConverter checks the row order against llama.cpp's
// converter: its LlamaModel.permute of rows 0–11 as 2 heads of 6 puts
// them in this order.
func TestRopeRowsMatchConverter(t *testing.T) {
	want := []int{0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11} // GGUF row g holds HF row want[g]
	got := make([]int, 12)
	for r := range 12 {
		got[ggufRopeRow(r, 6)] = r
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("GGUF rows hold HF rows %v, want %v", got, want)
	}
	if _, err := RopeToGGUF(Tensor{TensorInfo: TensorInfo{Name: "q", Type: TypeF32, Shape: []uint64{4, 6}, Size: 96}, Data: make([]byte, 96)}, 4); !errors.Is(err, ErrTensor) {
		t.Errorf("6 rows as 4 heads: %v", err)
	}
}

func TestAdvise(t *testing.T) {
	meta, ts := tinyMixtral(t)
	path := filepath.Join(t.TempDir(), "tiny.gguf")
	if err := WriteFile(path, meta, ts); err != nil {
		t.Fatal(err)
	}
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	e, err := c.HFTensor("model.layers.0.block_sparse_moe.experts.1.w1.weight")
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), e.Data...)
	for _, a := range []Advice{WillNeed, DontNeed} {
		if err := c.Advise(e, a); err != nil {
			t.Fatalf("advice %d: %v", a, err)
		}
	}
	// Dropped bytes of a file mapping are read again on use.
	if !bytes.Equal(e.Data, want) {
		t.Errorf("expert bytes changed after DontNeed")
	}
	if err := c.Advise(ts[0], WillNeed); !errors.Is(err, ErrNotFound) {
		t.Errorf("advice on memory outside the files: %v", err)
	}
}
