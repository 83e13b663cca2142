package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/gguf"
)

func newQuantizeCmd() *cobra.Command {
	var typ, dir, out string
	cmd := &cobra.Command{
		Use:   "quantize --type q8_0|q4_0|q4_k|q5_k|q6_k|q4_k_m|q5_k_m --model DIR --out FILE.gguf",
		Short: "Quantize a Hugging Face checkpoint into a GGUF file that llama.cpp and moegrid load",
		Long: `Quantize a Hugging Face Mixtral checkpoint (config.json, tokenizer.json,
safetensors) into one GGUF file laid out as llama.cpp writes Mixtral.

q8_0, q4_0, q6_k, q4_k_m and q5_k_m follow llama-quantize's file types of
those names, exceptions included (q4_k_m: Q6_K for output.weight and for
attn_v and ffn_down in some layers). q4_k and q5_k store every matrix in
that type. The norms and the router stay F32. A matrix whose rows do not
fit its type's blocks is stored as Q8_0 (rows of a multiple of 32 values)
or F16, and the command says so.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !model.IsQuantizedGGUFType(typ) {
				return fmt.Errorf("--type %q: want one of %s", typ, strings.Join(quantizedTypes(), ", "))
			}
			return writeGGUF(cmd, dir, out, typ)
		},
	}
	f := cmd.Flags()
	f.StringVar(&typ, "type", "", "quantization: "+strings.Join(quantizedTypes(), ", "))
	f.StringVar(&dir, "model", "", "Hugging Face checkpoint directory")
	f.StringVar(&out, "out", "", "GGUF file to write")
	cmd.MarkFlagRequired("type")
	cmd.MarkFlagRequired("model")
	cmd.MarkFlagRequired("out")
	return cmd
}

func newConvertCmd() *cobra.Command {
	var typ, dir, out string
	cmd := &cobra.Command{
		Use:   "convert --model DIR --out FILE.gguf [--type f32|f16|bf16]",
		Short: "Convert a Hugging Face checkpoint into a GGUF file that llama.cpp and moegrid load",
		Long: `Convert a Hugging Face Mixtral checkpoint (config.json, tokenizer.json,
safetensors) into one GGUF file laid out as llama.cpp writes Mixtral. The
matrices keep their dtype unless --type says otherwise; the norms and the
router are stored as F32, as llama.cpp's converter stores them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if typ != "" && (model.IsQuantizedGGUFType(typ) || !slices.Contains(model.GGUFWriteTypes, strings.ToLower(typ))) {
				return fmt.Errorf("--type %q: want f32, f16 or bf16 (quantize with moegrid model quantize)", typ)
			}
			return writeGGUF(cmd, dir, out, typ)
		},
	}
	f := cmd.Flags()
	f.StringVar(&typ, "type", "", "f32, f16 or bf16 (default: keep each tensor's dtype)")
	f.StringVar(&dir, "model", "", "Hugging Face checkpoint directory")
	f.StringVar(&out, "out", "", "GGUF file to write")
	cmd.MarkFlagRequired("model")
	cmd.MarkFlagRequired("out")
	return cmd
}

func quantizedTypes() []string {
	var out []string
	for _, t := range model.GGUFWriteTypes {
		if model.IsQuantizedGGUFType(t) {
			out = append(out, t)
		}
	}
	return out
}

// writeGGUF writes the checkpoint in dir as the GGUF file out, telling
// stderr of each tensor stored in another type than asked, and stdout what
// it wrote.
func writeGGUF(cmd *cobra.Command, dir, out, typ string) error {
	if !strings.EqualFold(filepath.Ext(out), ".gguf") {
		return errors.New("--out must name a .gguf file: moegrid reads a path as GGUF by its extension")
	}
	notices := cmd.ErrOrStderr()
	tensors, err := model.WriteGGUF(cmd.Context(), dir, out, model.GGUFWriteOptions{
		Type:   typ,
		Notice: func(msg string) { fmt.Fprintln(notices, "note:", msg) },
	})
	if err != nil {
		return err
	}
	printWritten(cmd.OutOrStdout(), out, tensors)
	return nil
}

// printWritten prints the file's tensor count and bytes by type.
func printWritten(w io.Writer, path string, tensors []gguf.TensorInfo) {
	count := map[gguf.TensorType]int{}
	size := map[gguf.TensorType]int64{}
	var total int64
	for _, t := range tensors {
		count[t.Type]++
		size[t.Type] += int64(t.Size)
		total += int64(t.Size)
	}
	types := make([]gguf.TensorType, 0, len(count))
	for t := range count {
		types = append(types, t)
	}
	slices.SortFunc(types, func(a, b gguf.TensorType) int { return cmp.Compare(size[b], size[a]) })
	parts := make([]string, len(types))
	for i, t := range types {
		parts[i] = fmt.Sprintf("%s %d (%s)", t, count[t], bytesString(size[t]))
	}
	fmt.Fprintf(w, "wrote %s: %d tensors, %s: %s\n", path, len(tensors), bytesString(total), strings.Join(parts, ", "))
}
