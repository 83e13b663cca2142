package demo_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/demo"
	"github.com/moegrid/moegrid/model/sample"
	"github.com/moegrid/moegrid/model/tokenizer"
)

// trained is the demo model loaded in one process.
type trained struct {
	*model.Model
	experts *model.ExpertSet
	tok     *tokenizer.Tokenizer
}

func load(t *testing.T) trained {
	t.Helper()
	dir := t.TempDir()
	if err := demo.Write(dir); err != nil {
		t.Fatal(err)
	}
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
	tok, err := tokenizer.Load(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	return trained{m, ex, tok}
}

func TestEnsure(t *testing.T) {
	cache := t.TempDir()
	const callers = 4
	dirs := make([]string, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dirs[i], errs[i] = demo.Ensure(cache)
		}()
	}
	wg.Wait()
	for i := range callers {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if dirs[i] != dirs[0] {
			t.Fatalf("Ensure returned %s and %s", dirs[0], dirs[i])
		}
	}
	if want := demo.Name + "-" + demo.Hash()[:16]; filepath.Base(dirs[0]) != want {
		t.Errorf("directory %s, want one named %s", dirs[0], want)
	}
	left, err := os.ReadDir(filepath.Join(cache, "models"))
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 {
		t.Errorf("cache holds %d entries, want only the model: %v", len(left), left)
	}
	err = fs.WalkDir(demo.FS(), ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		want, _ := fs.ReadFile(demo.FS(), name)
		got, err := os.ReadFile(filepath.Join(dirs[0], name))
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from the embedded file", name)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// A later call finds the model in place and leaves it alone.
	marker := filepath.Join(dirs[0], "marker")
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	again, err := demo.Ensure(cache)
	if err != nil || again != dirs[0] {
		t.Fatalf("second Ensure = %s, %v; want %s", again, err, dirs[0])
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("second Ensure rewrote the directory: %v", err)
	}
}

// golden is testdata/golden.json: the training script's torch forward pass
// (float32 compute on the BF16-rounded weights), an implementation
// independent of moegrid's.
type golden struct {
	Prompts []struct {
		Text          string        `json:"text"`
		IDs           []int         `json:"ids"`
		Top10IDs      [][]int       `json:"top10_ids"`
		Top10Logits   [][]float64   `json:"top10_logits"`
		LastLogits    []float64     `json:"last_logits"`
		Experts       [][][]int     `json:"experts"`
		ExpertWeights [][][]float64 `json:"expert_weights"`
		Greedy        []int         `json:"greedy"`
	} `json:"prompts"`
}

// TestGolden checks moegrid's forward pass on the demo model against torch:
// the tokenizer gives the same ids, the logits agree to float32 rounding,
// the gates pick the same experts with the same weights, and greedy
// decoding picks the same tokens.
func TestGolden(t *testing.T) {
	const tol = 1e-3
	data, err := os.ReadFile(filepath.Join("testdata", "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g golden
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	lm := load(t)
	vocab := lm.Config.VocabSize
	for _, p := range g.Prompts {
		t.Run(p.Text, func(t *testing.T) {
			if ids := lm.tok.Encode(p.Text, true); !slices.Equal(ids, p.IDs) {
				t.Fatalf("Encode = %v, torch's script used %v", ids, p.IDs)
			}
			res, err := lm.Forward(t.Context(), lm.experts, []model.Input{{Cache: lm.NewCache(), Tokens: p.IDs, AllLogits: true}})
			if err != nil {
				t.Fatal(err)
			}
			logits := res.Logits[0]
			T := len(p.IDs)
			var worst float64
			for pos := range T {
				for j, id := range p.Top10IDs[pos] {
					worst = max(worst, math.Abs(float64(logits[pos*vocab+id])-p.Top10Logits[pos][j]))
				}
			}
			for id, want := range p.LastLogits {
				worst = max(worst, math.Abs(float64(logits[(T-1)*vocab+id])-want))
			}
			if worst > tol {
				t.Errorf("max |Δlogit| = %.3g, want <= %g", worst, tol)
			}
			t.Logf("%d tokens: max |Δlogit| = %.3g", T, worst)
			for l := range p.Experts {
				for pos := range T {
					got, want := res.Routes[l][pos], p.Experts[l][pos]
					if !slices.Equal(got.Experts, want) {
						t.Errorf("layer %d position %d: experts %v, want %v", l, pos, got.Experts, want)
						continue
					}
					for j := range want {
						if d := math.Abs(float64(got.Weights[j]) - p.ExpertWeights[l][pos][j]); d > tol {
							t.Errorf("layer %d position %d: weight %d = %v, want %v", l, pos, j, got.Weights[j], p.ExpertWeights[l][pos][j])
						}
					}
				}
			}
			greedy, err := lm.Generate(t.Context(), lm.experts, p.IDs, len(p.Greedy), true, sample.Greedy)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(greedy, p.Greedy) {
				t.Errorf("greedy %v\nwant   %v", greedy, p.Greedy)
			}
		})
	}
}

var word = regexp.MustCompile(`[A-Za-z]+`)

func readLines(t *testing.T, name string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// TestGreedyEnglish checks that the model writes words of its corpus: most
// words of a 40-token greedy continuation occur in the training split.
func TestGreedyEnglish(t *testing.T) {
	const minShare = 0.8
	known := map[string]bool{}
	for _, w := range readLines(t, "words.txt") {
		known[w] = true
	}
	lm := load(t)
	for _, prompt := range []string{"And God said", "The capital of France is", "Blessed are"} {
		ids, err := lm.Generate(t.Context(), lm.experts, lm.tok.Encode(prompt, true), 40, true, sample.Greedy)
		if err != nil {
			t.Fatal(err)
		}
		text := lm.tok.Decode(ids)
		words := word.FindAllString(text, -1)
		var hits int
		for _, w := range words {
			if known[strings.ToLower(w)] {
				hits++
			}
		}
		t.Logf("%s|%s", prompt, text)
		if len(words) < 15 {
			t.Errorf("%q: only %d words in 40 tokens: %q", prompt, len(words), text)
		}
		if share := float64(hits) / float64(len(words)); share < minShare {
			t.Errorf("%q: %.0f%% of the words occur in the corpus, want >= %.0f%%: %q", prompt, 100*share, 100*minShare, text)
		}
	}
}

// TestHeldoutPerplexity measures, with moegrid's own forward pass, the
// perplexity of held-out chapters (never trained on) against their own
// unigram perplexity under the same tokenizer: the model must do at least
// four times better than the best unigram model of that very text.
func TestHeldoutPerplexity(t *testing.T) {
	const chapters, window = 4, 128
	lm := load(t)
	var stream []int
	for _, line := range readLines(t, "heldout.txt")[:chapters] {
		ids := lm.tok.Encode(line, false)
		if got := lm.tok.Decode(ids); got != line {
			t.Fatalf("tokenizer round trip changed the text:\n%q\n%q", got, line)
		}
		stream = append(append(stream, ids...), lm.Config.EOSTokenID)
	}
	var nll float64
	counts := map[int]int{}
	for start := 0; start < len(stream); start += window {
		chunk := stream[start:min(start+window, len(stream))]
		in := append([]int{lm.Config.BOSTokenID}, chunk[:len(chunk)-1]...)
		res, err := lm.Forward(t.Context(), lm.experts, []model.Input{{Cache: lm.NewCache(), Tokens: in, AllLogits: true}})
		if err != nil {
			t.Fatal(err)
		}
		for pos, target := range chunk {
			nll -= logSoftmax(res.Logits[0][pos*lm.Config.VocabSize:(pos+1)*lm.Config.VocabSize], target)
			counts[target]++
		}
	}
	var n int
	for _, c := range counts {
		n += c
	}
	var unigram float64
	for _, c := range counts {
		unigram -= float64(c) * math.Log(float64(c)/float64(n))
	}
	ppl, uniPPL := math.Exp(nll/float64(n)), math.Exp(unigram/float64(n))
	t.Logf("%d held-out tokens: perplexity %.2f, unigram %.2f, ratio %.3f", n, ppl, uniPPL, ppl/uniPPL)
	if ppl > uniPPL/4 {
		t.Errorf("perplexity %.2f, want <= a quarter of the unigram perplexity %.2f", ppl, uniPPL)
	}
}

func logSoftmax(logits []float32, target int) float64 {
	m := float64(slices.Max(logits))
	var sum float64
	for _, v := range logits {
		sum += math.Exp(float64(v) - m)
	}
	return float64(logits[target]) - m - math.Log(sum)
}
