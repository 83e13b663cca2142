package safetensors

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// tinyMixtral returns the tensors of a 2-layer, 4-expert Mixtral with
// hidden size 8 and FFN size 16, in BF16, split over three shards the way
// Hugging Face does: layer 0's experts 2 and 3 fall in shard 2, and layer 1
// straddles shards 2 and 3.
func tinyMixtral() (shards [][]WriteTensor) {
	const h, f, e, vocab = 8, 16, 4, 32
	shards = make([][]WriteTensor, 3)
	add := func(shard int, name string, shape ...int) {
		shards[shard] = append(shards[shard], tensorOf(name, BF16, shape...))
	}
	add(0, "model.embed_tokens.weight", vocab, h)
	for l := range 2 {
		p := fmt.Sprintf("model.layers.%d.", l)
		s := l // layer 0 in shard 0, layer 1 in shard 1...
		add(s, p+"input_layernorm.weight", h)
		add(s, p+"self_attn.q_proj.weight", h, h)
		add(s, p+"self_attn.k_proj.weight", h/2, h)
		add(s, p+"self_attn.v_proj.weight", h/2, h)
		add(s, p+"self_attn.o_proj.weight", h, h)
		add(s, p+"post_attention_layernorm.weight", h)
		add(s, p+"block_sparse_moe.gate.weight", e, h)
		for x := range e {
			es := s
			if x >= 2 {
				es = s + 1 // ...and its last experts in the next shard
			}
			q := fmt.Sprintf("%sblock_sparse_moe.experts.%d.", p, x)
			add(es, q+"w1.weight", f, h)
			add(es, q+"w2.weight", h, f)
			add(es, q+"w3.weight", f, h)
		}
	}
	add(2, "model.norm.weight", h)
	add(2, "lm_head.weight", vocab, h)
	return shards
}

// writeSharded writes shards and their index into dir and returns all the
// tensors by name.
func writeSharded(t *testing.T, dir string, shards [][]WriteTensor) map[string]WriteTensor {
	t.Helper()
	all := make(map[string]WriteTensor)
	wm := make(map[string]string)
	var total int64
	for i, ts := range shards {
		file := ShardFileName(i+1, len(shards))
		if err := WriteFile(filepath.Join(dir, file), ts, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
		for _, w := range ts {
			all[w.Name] = w
			wm[w.Name] = file
			total += int64(len(w.Data))
		}
	}
	if err := WriteIndex(filepath.Join(dir, IndexFileName), total, wm); err != nil {
		t.Fatal(err)
	}
	return all
}

// experts selects the expert tensors of the given expert indices.
func experts(ids ...int) func(string) bool {
	return func(name string) bool {
		for _, id := range ids {
			if strings.Contains(name, fmt.Sprintf(".experts.%d.", id)) {
				return true
			}
		}
		return false
	}
}

func notExperts(name string) bool { return !strings.Contains(name, ".experts.") }

func TestOpenCheckpointSharded(t *testing.T) {
	tests := []struct {
		name string
		want func(string) bool
		// corrupt lists shards (0-based) that are overwritten with
		// garbage, remove shards that are deleted: neither may be needed.
		corrupt, remove []int
	}{
		{"all", nil, nil, nil},
		{"router", notExperts, nil, nil},
		{"experts 0 and 1", experts(0, 1), []int{2}, nil},
		{"experts 0 and 1, shard 3 missing", experts(0, 1), nil, []int{2}},
		{"experts 2 and 3", experts(2, 3), []int{0}, nil},
		{"one tensor", func(n string) bool { return n == "lm_head.weight" }, []int{0}, []int{1}},
		{"nothing", func(string) bool { return false }, []int{0, 1}, []int{2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			all := writeSharded(t, dir, tinyMixtral())
			for _, s := range tt.corrupt {
				if err := os.WriteFile(filepath.Join(dir, ShardFileName(s+1, 3)), []byte("garbage, not a shard"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for _, s := range tt.remove {
				if err := os.Remove(filepath.Join(dir, ShardFileName(s+1, 3))); err != nil {
					t.Fatal(err)
				}
			}
			c, err := OpenCheckpoint(dir, tt.want)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()

			var wantNames []string
			var wantBytes int64
			for name, w := range all {
				if tt.want == nil || tt.want(name) {
					wantNames = append(wantNames, name)
					wantBytes += int64(len(w.Data))
				}
			}
			slices.Sort(wantNames)
			if got := c.Names(); !slices.Equal(got, wantNames) {
				t.Errorf("Names = %q\nwant %q", got, wantNames)
			}
			if got := c.MappedBytes(); got != wantBytes {
				t.Errorf("MappedBytes = %d, want %d", got, wantBytes)
			}
			for _, name := range slices.Sorted(maps.Keys(all)) {
				w := all[name]
				got, err := c.Tensor(name)
				if tt.want != nil && !tt.want(name) {
					if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), name) {
						t.Errorf("Tensor(%q), not wanted = %v; want ErrNotFound naming it", name, err)
					}
					continue
				}
				if err != nil || !bytes.Equal(got.Data, w.Data) || !slices.Equal(got.Shape, w.Shape) || got.DType != w.DType {
					t.Errorf("Tensor(%q) = %v, %v", name, got.Shape, err)
				}
			}
			if _, err := c.Tensor("no.such.tensor"); !errors.Is(err, ErrNotFound) {
				t.Errorf("Tensor(absent) = %v; want ErrNotFound", err)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if len(wantNames) > 0 {
				if _, err := c.Tensor(wantNames[0]); !errors.Is(err, ErrClosed) {
					t.Errorf("Tensor after Close = %v; want ErrClosed", err)
				}
			}
			if err := c.Close(); err != nil {
				t.Errorf("second Close = %v", err)
			}
		})
	}
}

func TestOpenCheckpointSingle(t *testing.T) {
	dir := t.TempDir()
	var ws []WriteTensor
	for _, s := range tinyMixtral() {
		ws = append(ws, s...)
	}
	if err := WriteFile(filepath.Join(dir, SingleFileName), ws, nil); err != nil {
		t.Fatal(err)
	}
	// A stale index beside model.safetensors is ignored, as transformers
	// ignores it.
	if err := os.WriteFile(filepath.Join(dir, IndexFileName), []byte("not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := OpenCheckpoint(dir, experts(3))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	names := c.Names()
	if len(names) != 6 { // 2 layers × w1, w2, w3
		t.Fatalf("Names = %q", names)
	}
	var want int64
	for _, w := range ws {
		if experts(3)(w.Name) {
			want += int64(len(w.Data))
			got, err := c.Tensor(w.Name)
			if err != nil || !bytes.Equal(got.Data, w.Data) {
				t.Errorf("Tensor(%q) = %v", w.Name, err)
			}
		}
	}
	if c.MappedBytes() != want {
		t.Errorf("MappedBytes = %d, want %d", c.MappedBytes(), want)
	}
	if _, err := c.Tensor("model.norm.weight"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Tensor(unwanted) = %v; want ErrNotFound", err)
	}

	all, err := OpenCheckpoint(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer all.Close()
	if len(all.Names()) != len(ws) {
		t.Errorf("all: %d names, want %d", len(all.Names()), len(ws))
	}
}

func TestOpenCheckpointErrors(t *testing.T) {
	shardPath := func(dir string, k int) string { return filepath.Join(dir, ShardFileName(k, 3)) }
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) // after a valid sharded checkpoint is written
		want  func(string) bool
		errs  []error
	}{
		{"no checkpoint", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, IndexFileName))
		}, nil, []error{ErrNoCheckpoint}},
		{"missing wanted shard", func(t *testing.T, dir string) {
			os.Remove(shardPath(dir, 2))
		}, experts(0), []error{fs.ErrNotExist}},
		{"corrupt wanted shard", func(t *testing.T, dir string) {
			os.WriteFile(shardPath(dir, 1), []byte("garbage, not a shard"), 0o644)
		}, nil, []error{ErrHeader}},
		{"shard lacks a tensor", func(t *testing.T, dir string) {
			// Shard 3 without lm_head.
			ts := tinyMixtral()[2]
			ts = slices.DeleteFunc(ts, func(w WriteTensor) bool { return w.Name == "lm_head.weight" })
			writeOrFail(t, shardPath(dir, 3), ts)
		}, nil, []error{ErrNotFound}},
		{"shard lacks an unwanted tensor the index gives it", func(t *testing.T, dir string) {
			ts := tinyMixtral()[2]
			ts = slices.DeleteFunc(ts, func(w WriteTensor) bool { return w.Name == "lm_head.weight" })
			writeOrFail(t, shardPath(dir, 3), ts)
		}, func(n string) bool { return n == "model.norm.weight" }, []error{ErrNotFound}},
		{"tensor in two shards", func(t *testing.T, dir string) {
			// Shard 3 also holds the embedding that the index puts in shard 1.
			ts := append(tinyMixtral()[2], tensorOf("model.embed_tokens.weight", BF16, 32, 8))
			writeOrFail(t, shardPath(dir, 3), ts)
		}, nil, []error{ErrDuplicate}},
		{"tensor twice in the index", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, IndexFileName), []byte(`{"weight_map":{"a":"x.safetensors","a":"y.safetensors"}}`), 0o644)
		}, nil, []error{ErrDuplicate}},
		{"bad index", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, IndexFileName), []byte(`{"metadata":{}}`), 0o644)
		}, nil, []error{ErrIndex}},
		{"index escapes the directory", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, IndexFileName), []byte(`{"weight_map":{"a":"../model-00001-of-00003.safetensors"}}`), 0o644)
		}, nil, []error{ErrIndex}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeSharded(t, dir, tinyMixtral())
			tt.setup(t, dir)
			c, err := OpenCheckpoint(dir, tt.want)
			if err == nil {
				c.Close()
				t.Fatal("OpenCheckpoint succeeded")
			}
			for _, want := range tt.errs {
				if !errors.Is(err, want) {
					t.Errorf("OpenCheckpoint = %v; want %v", err, want)
				}
			}
		})
	}
	if _, err := OpenCheckpoint(filepath.Join(t.TempDir(), "absent"), nil); !errors.Is(err, ErrNoCheckpoint) {
		t.Errorf("OpenCheckpoint(absent dir) = %v; want ErrNoCheckpoint", err)
	}
}

func writeOrFail(t *testing.T, path string, ts []WriteTensor) {
	t.Helper()
	if err := WriteFile(path, ts, nil); err != nil {
		t.Fatal(err)
	}
}

func TestParseIndex(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		total int64
		wm    map[string]string
		err   error
	}{
		{"hf", `{"metadata":{"total_size":93405585408},"weight_map":{"a":"model-00001-of-00019.safetensors"}}`,
			93405585408, map[string]string{"a": "model-00001-of-00019.safetensors"}, nil},
		{"float total", `{"metadata":{"total_size":14483464192.0,"format":"pt"},"weight_map":{}}`, 14483464192, map[string]string{}, nil},
		{"no metadata", `{"weight_map":{"a":"./x.safetensors"}}`, 0, map[string]string{"a": "x.safetensors"}, nil},
		{"null metadata, extra keys", `{"metadata":null,"weight_map":{},"other":[1]}`, 0, map[string]string{}, nil},
		{"no weight_map", `{"metadata":{"total_size":1}}`, 0, nil, ErrIndex},
		{"weight_map not object", `{"weight_map":[]}`, 0, nil, ErrIndex},
		{"file not string", `{"weight_map":{"a":1}}`, 0, nil, ErrIndex},
		{"absolute file", `{"weight_map":{"a":"/etc/passwd"}}`, 0, nil, ErrIndex},
		{"parent file", `{"weight_map":{"a":"x/../../y"}}`, 0, nil, ErrIndex},
		{"empty file", `{"weight_map":{"a":""}}`, 0, nil, ErrIndex},
		{"negative total", `{"metadata":{"total_size":-1},"weight_map":{}}`, 0, nil, ErrIndex},
		{"fractional total", `{"metadata":{"total_size":1.5},"weight_map":{}}`, 0, nil, ErrIndex},
		{"string total", `{"metadata":{"total_size":"1"},"weight_map":{}}`, 0, nil, ErrIndex},
		{"duplicate tensor", `{"weight_map":{"a":"x","a":"x"}}`, 0, nil, ErrDuplicate},
		{"not JSON", `{"weight_map":`, 0, nil, ErrIndex},
		{"trailing data", `{"weight_map":{}} x`, 0, nil, ErrIndex},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x, err := ParseIndex([]byte(tt.in))
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("ParseIndex = %+v, %v; want %v", x, err, tt.err)
				}
				return
			}
			if err != nil || x.TotalSize != tt.total || !maps.Equal(x.WeightMap, tt.wm) {
				t.Fatalf("ParseIndex = %+v, %v; want %d, %v", x, err, tt.total, tt.wm)
			}
		})
	}
}

// FuzzParseIndex checks that ParseIndex never panics and that every file it
// accepts stays inside the checkpoint directory.
func FuzzParseIndex(f *testing.F) {
	f.Add([]byte(`{"metadata":{"total_size":16},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"sub/../x"}}`))
	f.Add([]byte(`{"weight_map":{"a":"../x"}}`))
	f.Add([]byte(`{"metadata":{"total_size":1e3},"weight_map":{}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		x, err := ParseIndex(data)
		if err != nil {
			return
		}
		if x.TotalSize < 0 || x.WeightMap == nil {
			t.Fatalf("ParseIndex = %+v", x)
		}
		for _, file := range x.Files() {
			if !filepath.IsLocal(filepath.FromSlash(file)) {
				t.Fatalf("file %q leaves the directory", file)
			}
		}
	})
}
