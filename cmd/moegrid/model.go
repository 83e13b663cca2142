package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/demo"
	"github.com/moegrid/moegrid/model/gguf"
	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/sample"
	"github.com/moegrid/moegrid/model/synth"
	"github.com/moegrid/moegrid/model/tokenizer"
)

func newModelCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "model",
		Short: "Create, inspect and run checkpoints in one process",
	}
	cmd.AddCommand(newSynthCmd(), newDemoCmd(), newInspectCmd(), newEvalCmd(), newLocalGenerateCmd(), newQuantizeCmd(), newConvertCmd())
	return cmd
}

func newSynthCmd() *cobra.Command {
	var (
		preset, dtype, out string
		seed               uint64
		shards             int
	)
	cmd := &cobra.Command{
		Use:   "synth --preset tiny|small --out DIR",
		Short: "Write a synthetic Mixtral checkpoint (spec synth-v1)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := synth.PresetByName(preset)
			if err != nil {
				return err
			}
			dt, err := parseDType(dtype)
			if err != nil {
				return err
			}
			if out == "" {
				return errors.New("--out is required")
			}
			if err := synth.Write(out, synth.Options{Preset: p, Seed: seed, DType: dt, Shards: shards}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (preset %s, seed %d, %s, %d shard(s))\n", out, p.Name, seed, dt, shards)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&preset, "preset", "tiny", "model shape: tiny or small")
	f.Uint64Var(&seed, "seed", 1, "weight seed")
	f.StringVar(&dtype, "dtype", "f32", "weight dtype: f32 or bf16")
	f.IntVar(&shards, "shards", 1, "number of safetensors files")
	f.StringVar(&out, "out", "", "output directory")
	return cmd
}

func newDemoCmd() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "demo --out DIR",
		Short: "Write the built-in demo model (a Mixtral trained on the King James Bible)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return errors.New("--out is required")
			}
			if err := demo.Write(out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (%s, sha256 %s)\n", out, demo.Name, demo.Hash())
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "output directory")
	return cmd
}

func parseDType(s string) (safetensors.DType, error) {
	switch strings.ToLower(s) {
	case "f32", "float32":
		return safetensors.F32, nil
	case "bf16", "bfloat16":
		return safetensors.BF16, nil
	}
	return "", fmt.Errorf("--dtype %q: want f32 or bf16", s)
}

func newInspectCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "inspect DIR|FILE.gguf",
		Short: "Print a checkpoint's config, tensors and bytes per expert",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := model.LoadConfig(args[0])
			if err != nil {
				return err
			}
			tensors, err := listTensors(args[0])
			if err != nil {
				return err
			}
			return inspect(cmd.OutOrStdout(), cfg, tensors, output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

type tensorSummary struct {
	Name  string `json:"name"`
	DType string `json:"dtype"`
	Shape []int  `json:"shape"`
	Bytes int64  `json:"bytes"`
	// expert marks an expert weight (or a stack of them).
	expert bool
}

// listTensors describes the tensors of a checkpoint directory or GGUF file,
// from their headers. A GGUF tensor's shape is given outermost first, as a
// safetensors shape is ([rows, cols], [experts, rows, cols]), and its dtype
// is the GGML type.
func listTensors(path string) ([]tensorSummary, error) {
	var out []tensorSummary
	if model.IsGGUF(path) {
		ck, err := gguf.Open(path)
		if err != nil {
			return nil, err
		}
		defer ck.Close()
		for _, name := range ck.Names() {
			info, err := ck.Info(name)
			if err != nil {
				return nil, err
			}
			shape := make([]int, len(info.Shape))
			for i, d := range info.Shape {
				shape[len(shape)-1-i] = int(d)
			}
			out = append(out, tensorSummary{Name: name, DType: info.Type.String(), Shape: shape, Bytes: int64(info.Size), expert: model.IsGGUFExpertTensor(name)})
		}
		return out, nil
	}
	ck, err := safetensors.OpenCheckpoint(path, nil)
	if err != nil {
		return nil, err
	}
	defer ck.Close()
	for _, name := range ck.Names() {
		t, err := ck.Tensor(name)
		if err != nil {
			return nil, err
		}
		_, _, expert := model.ParseExpertTensor(name)
		out = append(out, tensorSummary{Name: name, DType: string(t.DType), Shape: t.Shape, Bytes: int64(len(t.Data)), expert: expert})
	}
	return out, nil
}

type inspectSummary struct {
	Config              model.Config    `json:"config"`
	DTypes              []string        `json:"dtypes"`
	TotalBytes          int64           `json:"total_bytes"`
	ExpertBytes         int64           `json:"expert_bytes"`
	BytesPerExpert      int64           `json:"bytes_per_expert"`
	BytesPerExpertLayer int64           `json:"bytes_per_expert_layer"`
	NonExpertBytes      int64           `json:"non_expert_bytes"`
	Tensors             []tensorSummary `json:"tensors"`
}

func inspect(w io.Writer, cfg model.Config, tensors []tensorSummary, output string) error {
	s := inspectSummary{Config: cfg, Tensors: tensors}
	dtypes := map[string]bool{}
	for _, t := range tensors {
		s.TotalBytes += t.Bytes
		if t.expert {
			s.ExpertBytes += t.Bytes
		}
		if !dtypes[t.DType] {
			dtypes[t.DType] = true
			s.DTypes = append(s.DTypes, t.DType)
		}
	}
	s.NonExpertBytes = s.TotalBytes - s.ExpertBytes
	s.BytesPerExpert = s.ExpertBytes / int64(cfg.NumLocalExperts)
	s.BytesPerExpertLayer = s.BytesPerExpert / int64(cfg.NumHiddenLayers)
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	case "table":
	default:
		return fmt.Errorf("--output %q: want table or json", output)
	}
	c := cfg
	fmt.Fprintf(w, "model_type %s, %d layers, hidden %d, intermediate %d, heads %d (kv %d, head dim %d), vocab %d\n",
		c.ModelType, c.NumHiddenLayers, c.HiddenSize, c.IntermediateSize, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim(), c.VocabSize)
	fmt.Fprintf(w, "experts %d (top-%d), rope_theta %g, rms_norm_eps %g, sliding_window %s\n",
		c.NumLocalExperts, c.NumExpertsPerTok, c.RopeTheta, c.RMSNormEps, window(c.SlidingWindow))
	fmt.Fprintf(w, "dtype %s; %d tensors, %s total: experts %s (%s per expert, %s per expert-layer), non-expert %s\n\n",
		strings.Join(s.DTypes, ","), len(s.Tensors), bytesString(s.TotalBytes), bytesString(s.ExpertBytes),
		bytesString(s.BytesPerExpert), bytesString(s.BytesPerExpertLayer), bytesString(s.NonExpertBytes))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TENSOR\tDTYPE\tSHAPE\tBYTES")
	for _, t := range s.Tensors {
		fmt.Fprintf(tw, "%s\t%s\t%v\t%d\n", t.Name, t.DType, t.Shape, t.Bytes)
	}
	return tw.Flush()
}

func window(w *int) string {
	if w == nil {
		return "none"
	}
	return strconv.Itoa(*w)
}

func bytesString(n int64) string { return humanize.IBytes(uint64(n)) }

// parseIDs reads "1,415,2936".
func parseIDs(s string) ([]int, error) {
	var ids []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		id, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("--ids: %q is not a token id", f)
		}
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return nil, errors.New("--ids: no token ids")
	}
	return ids, nil
}

// localModel is a whole model loaded into this process.
type localModel struct {
	*model.Model
	experts *model.ExpertSet
}

func loadLocal(dir string) (*localModel, error) {
	m, err := model.Load(dir)
	if err != nil {
		return nil, err
	}
	ex, err := model.LoadExperts(dir, m.Config, nil)
	if err != nil {
		m.Close()
		return nil, err
	}
	return &localModel{Model: m, experts: ex}, nil
}

func (l *localModel) Close() {
	l.experts.Close()
	l.Model.Close()
}

// promptIDs takes --ids, or tokenizes --prompt with the checkpoint's
// tokenizer (tokenizer.json, or a GGUF file's own).
func promptIDs(dir, ids, prompt string) ([]int, error) {
	if ids != "" {
		return parseIDs(ids)
	}
	if prompt == "" {
		return nil, errors.New("give --ids or --prompt")
	}
	tok, err := openTokenizer(dir)
	if err != nil {
		return nil, err
	}
	return tok.Encode(prompt, true), nil
}

func newEvalCmd() *cobra.Command {
	var dir, ids, prompt string
	cmd := &cobra.Command{
		Use:   "eval --model DIR|FILE.gguf --ids 1,415,2936",
		Short: "Run a prompt in one process; print the last logits, the top 10 per position and the experts chosen as JSON",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			toks, err := promptIDs(dir, ids, prompt)
			if err != nil {
				return err
			}
			lm, err := loadLocal(dir)
			if err != nil {
				return err
			}
			defer lm.Close()
			res, err := lm.Forward(cmd.Context(), lm.experts, []model.Input{{Cache: lm.NewCache(), Tokens: toks, AllLogits: true}})
			if err != nil {
				return err
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(evalOutput(res, len(toks), lm.Config.VocabSize))
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "model", "", "checkpoint directory or GGUF file")
	f.StringVar(&ids, "ids", "", "prompt token ids, comma separated (BOS included if wanted)")
	f.StringVar(&prompt, "prompt", "", "prompt text, tokenized with BOS (instead of --ids)")
	cmd.MarkFlagRequired("model")
	return cmd
}

type evalResult struct {
	LogitsLast []float32  `json:"logits_last"`
	Top        [][][2]any `json:"top"`
	Experts    [][][]int  `json:"experts"`
}

func evalOutput(res *model.Result, T, vocab int) evalResult {
	logits := res.Logits[0]
	out := evalResult{LogitsLast: logits[(T-1)*vocab:]}
	for t := range T {
		row := logits[t*vocab : (t+1)*vocab]
		var top [][2]any
		for _, id := range topK(row, 10) {
			top = append(top, [2]any{id, row[id]})
		}
		out.Top = append(out.Top, top)
	}
	for _, layer := range res.Routes {
		var per [][]int
		for _, r := range layer {
			per = append(per, r.Experts)
		}
		out.Experts = append(out.Experts, per)
	}
	return out
}

// topK returns the indices of the k largest values, descending, lower index
// first on ties.
func topK(v []float32, k int) []int {
	var idx []int
	for i := range v {
		pos := len(idx)
		for pos > 0 && v[i] > v[idx[pos-1]] {
			pos--
		}
		if pos >= k {
			continue
		}
		idx = append(idx, 0)
		copy(idx[pos+1:], idx[pos:])
		idx[pos] = i
		if len(idx) > k {
			idx = idx[:k]
		}
	}
	return idx
}

func newLocalGenerateCmd() *cobra.Command {
	var (
		dir, ids, prompt string
		maxTokens        int
		temperature      float64
		topP             float64
		topKFlag         int
		seed             uint64
		ignoreEOS        bool
	)
	cmd := &cobra.Command{
		Use:   "generate --model DIR|FILE.gguf --ids 1,415 --max-tokens 24",
		Short: "Generate in one process (greedy by default); print {\"ids\": [...]}",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			toks, err := promptIDs(dir, ids, prompt)
			if err != nil {
				return err
			}
			s, err := sample.New(sample.Params{Temperature: temperature, TopK: topKFlag, TopP: topP, Seed: seed})
			if err != nil {
				return err
			}
			if maxTokens < 1 {
				return fmt.Errorf("--max-tokens %d must be at least 1", maxTokens)
			}
			lm, err := loadLocal(dir)
			if err != nil {
				return err
			}
			defer lm.Close()
			out, err := lm.Generate(cmd.Context(), lm.experts, toks, maxTokens, ignoreEOS, s.Next)
			if err != nil {
				return err
			}
			if out == nil {
				out = []int{}
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(map[string][]int{"ids": out})
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "model", "", "checkpoint directory or GGUF file")
	f.StringVar(&ids, "ids", "", "prompt token ids, comma separated")
	f.StringVar(&prompt, "prompt", "", "prompt text, tokenized with BOS (instead of --ids)")
	f.IntVar(&maxTokens, "max-tokens", 16, "number of tokens to generate")
	f.Float64Var(&temperature, "temperature", 0, "sampling temperature; 0 is greedy")
	f.Float64Var(&topP, "top-p", 0, "nucleus sampling threshold in (0, 1]; 0 disables")
	f.IntVar(&topKFlag, "top-k", 0, "keep the k most likely tokens; 0 disables")
	f.Uint64Var(&seed, "seed", 0, "sampling seed")
	f.BoolVar(&ignoreEOS, "ignore-eos", false, "keep generating past the end-of-sequence token")
	cmd.MarkFlagRequired("model")
	return cmd
}

func newTokenizeCmd() *cobra.Command {
	var (
		file            string
		noBOS, noPrefix bool
	)
	cmd := &cobra.Command{
		Use:   "tokenize --tokenizer FILE",
		Short: "Tokenize JSON lines {\"text\": ...} from stdin into {\"ids\": [...]} lines",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tok, err := openTokenizer(file)
			if err != nil {
				return err
			}
			in := bufio.NewScanner(cmd.InOrStdin())
			in.Buffer(make([]byte, 1<<20), 64<<20)
			out := bufio.NewWriter(cmd.OutOrStdout())
			defer out.Flush()
			enc := json.NewEncoder(out)
			for line := 1; in.Scan(); line++ {
				if len(strings.TrimSpace(in.Text())) == 0 {
					continue
				}
				var req struct {
					Text *string `json:"text"`
				}
				if err := json.Unmarshal(in.Bytes(), &req); err != nil {
					return fmt.Errorf("stdin line %d: %w", line, err)
				}
				if req.Text == nil {
					return fmt.Errorf("stdin line %d: no \"text\" field", line)
				}
				var ids []int
				switch {
				case noPrefix:
					ids = tok.EncodeRaw(*req.Text)
				default:
					ids = tok.Encode(*req.Text, !noBOS)
				}
				if ids == nil {
					ids = []int{}
				}
				if err := enc.Encode(map[string][]int{"ids": ids}); err != nil {
					return err
				}
			}
			return in.Err()
		},
	}
	f := cmd.Flags()
	f.StringVar(&file, "tokenizer", "", "tokenizer.json file, a checkpoint directory holding one, or a GGUF file")
	f.BoolVar(&noBOS, "no-bos", false, "do not prepend BOS (the text still gets its leading \"▁\", as Hugging Face's add_special_tokens=False)")
	f.BoolVar(&noPrefix, "no-prefix", false, "neither BOS nor the leading \"▁\" (the reference encode(text, false, false))")
	cmd.MarkFlagRequired("tokenizer")
	return cmd
}

// openTokenizer accepts a tokenizer.json file, a directory holding one, or
// a GGUF file, whose tokenizer.ggml.* metadata describe its tokenizer.
func openTokenizer(path string) (*tokenizer.Tokenizer, error) {
	if fi, err := os.Stat(path); model.IsGGUF(path) || (err == nil && fi.IsDir()) {
		return model.LoadTokenizer(path)
	}
	return tokenizer.Load(path)
}
