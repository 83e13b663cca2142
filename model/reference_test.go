package model_test

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/kernel"
	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/sample"
	"github.com/moegrid/moegrid/model/synth"
)

// reference is one file of testdata/reference: outputs of an independent
// float64 implementation of MixtralForCausalLM on a synthetic checkpoint.
type reference struct {
	Checkpoint struct {
		Preset string `json:"preset"`
		Seed   uint64 `json:"seed"`
		DType  string `json:"dtype"`
	} `json:"checkpoint"`
	Prompts []struct {
		IDs           []int         `json:"ids"`
		Top10IDs      [][]int       `json:"top10_ids"`
		Top10Logits   [][]float64   `json:"top10_logits"`
		LastLogits    []float64     `json:"last_logits"`
		Experts       [][][]int     `json:"experts"`
		ExpertWeights [][][]float64 `json:"expert_weights"`
		Greedy        []int         `json:"greedy"`
	} `json:"prompts"`
}

func loadReference(t *testing.T, file string) reference {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "reference", file))
	if err != nil {
		t.Fatal(err)
	}
	var ref reference
	if err := json.Unmarshal(data, &ref); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return ref
}

var (
	checkpointsMu sync.Mutex
	checkpoints   = map[string]string{}
)

// checkpoint synthesises (once per test binary) the checkpoint of a preset,
// seed and dtype and returns its directory.
func checkpoint(t *testing.T, preset string, seed uint64, dtype safetensors.DType, shards int) string {
	t.Helper()
	checkpointsMu.Lock()
	defer checkpointsMu.Unlock()
	key := filepath.Join(preset, string(dtype), string(rune('0'+shards)), string(rune('0'+seed)))
	if dir, ok := checkpoints[key]; ok {
		return dir
	}
	p, err := synth.PresetByName(preset)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "moegrid-model-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := synth.Write(dir, synth.Options{Preset: p, Seed: seed, DType: dtype, Shards: shards}); err != nil {
		t.Fatal(err)
	}
	checkpoints[key] = dir
	return dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, dir := range checkpoints {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

type local struct {
	*model.Model
	experts *model.ExpertSet
}

func loadLocal(t *testing.T, dir string) local {
	t.Helper()
	m, err := model.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	ex, err := model.LoadExperts(dir, m.Config, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ex.Close() })
	return local{m, ex}
}

// TestReference checks the forward pass against the independent reference:
// logits within tolerance at every position, identical expert choices with
// matching weights, and identical greedy continuations.
func TestReference(t *testing.T) {
	for _, tc := range []struct {
		file   string
		dtype  safetensors.DType
		shards int
		tol    float64
	}{
		{"tiny-seed1-f32.json", safetensors.F32, 1, 1e-3},
		{"tiny-seed1-f32.json", safetensors.F32, 3, 1e-3},
		{"tiny-seed1-bf16.json", safetensors.BF16, 1, 2e-2},
	} {
		t.Run(tc.file, func(t *testing.T) {
			ref := loadReference(t, tc.file)
			dir := checkpoint(t, ref.Checkpoint.Preset, ref.Checkpoint.Seed, tc.dtype, tc.shards)
			lm := loadLocal(t, dir)
			vocab := lm.Config.VocabSize
			for pi, p := range ref.Prompts {
				res, err := lm.Forward(t.Context(), lm.experts, []model.Input{{Cache: lm.NewCache(), Tokens: p.IDs, AllLogits: true}})
				if err != nil {
					t.Fatal(err)
				}
				logits := res.Logits[0]
				var worst float64
				T := len(p.IDs)
				for pos := range T {
					for j, id := range p.Top10IDs[pos] {
						worst = max(worst, math.Abs(float64(logits[pos*vocab+id])-p.Top10Logits[pos][j]))
					}
				}
				for id, want := range p.LastLogits {
					worst = max(worst, math.Abs(float64(logits[(T-1)*vocab+id])-want))
				}
				if worst > tc.tol {
					t.Errorf("prompt %d: max |Δlogit| = %.3g, want <= %g", pi, worst, tc.tol)
				}
				t.Logf("prompt %d (%d tokens): max |Δlogit| = %.3g", pi, T, worst)
				for l := range p.Experts {
					for pos := range T {
						got := res.Routes[l][pos]
						want := p.Experts[l][pos]
						if got.Experts[0] != want[0] || got.Experts[1] != want[1] {
							t.Errorf("prompt %d layer %d position %d: experts %v, want %v", pi, l, pos, got.Experts, want)
							continue
						}
						for j := range 2 {
							if d := math.Abs(float64(got.Weights[j]) - p.ExpertWeights[l][pos][j]); d > tc.tol {
								t.Errorf("prompt %d layer %d position %d: weight %d = %v, want %v", pi, l, pos, j, got.Weights[j], p.ExpertWeights[l][pos][j])
							}
						}
					}
				}
				greedy, err := lm.Generate(t.Context(), lm.experts, p.IDs, len(p.Greedy), true, sample.Greedy)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(greedy, p.Greedy) {
					t.Errorf("prompt %d: greedy %v\nwant %v", pi, greedy, p.Greedy)
				}
			}
		})
	}
}

// TestReferenceComputeBF16 measures the opt-in BF16 compute mode against
// the reference on the BF16 checkpoint: its logits differ by the rounding
// of the activations (BENCHMARKS.md quotes the figures this logs), within
// a bound that a wrong kernel would break by orders of magnitude.
func TestReferenceComputeBF16(t *testing.T) {
	if err := kernel.SetCompute(kernel.ComputeBF16); err != nil {
		t.Skipf("no BF16 compute mode on this CPU: %v", err)
	}
	t.Cleanup(func() { kernel.SetCompute(kernel.ComputeExact) })
	ref := loadReference(t, "tiny-seed1-bf16.json")
	lm := loadLocal(t, checkpoint(t, ref.Checkpoint.Preset, ref.Checkpoint.Seed, safetensors.BF16, 1))
	vocab := lm.Config.VocabSize
	var worst float64
	var routes, sameRoutes, greedy, sameGreedy int
	for _, p := range ref.Prompts {
		res, err := lm.Forward(t.Context(), lm.experts, []model.Input{{Cache: lm.NewCache(), Tokens: p.IDs, AllLogits: true}})
		if err != nil {
			t.Fatal(err)
		}
		T := len(p.IDs)
		for pos := range T {
			for j, id := range p.Top10IDs[pos] {
				worst = max(worst, math.Abs(float64(res.Logits[0][pos*vocab+id])-p.Top10Logits[pos][j]))
			}
		}
		for id, want := range p.LastLogits {
			worst = max(worst, math.Abs(float64(res.Logits[0][(T-1)*vocab+id])-want))
		}
		for l := range p.Experts {
			for pos := range T {
				routes++
				if got := res.Routes[l][pos].Experts; slices.Equal(got, p.Experts[l][pos][:2]) {
					sameRoutes++
				}
			}
		}
		g, err := lm.Generate(t.Context(), lm.experts, p.IDs, len(p.Greedy), true, sample.Greedy)
		if err != nil {
			t.Fatal(err)
		}
		for i := range p.Greedy {
			greedy++
			if i < len(g) && g[i] == p.Greedy[i] {
				sameGreedy++
			}
		}
	}
	t.Logf("compute bf16: max |Δlogit| = %.3g; expert pairs %d/%d identical; greedy tokens %d/%d identical", worst, sameRoutes, routes, sameGreedy, greedy)
	if worst > 0.5 {
		t.Errorf("compute bf16: max |Δlogit| = %.3g, want <= 0.5", worst)
	}
}
