package main

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestQuantizeAndConvert(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "tiny")
	if out, err := runCmd(t, "model", "synth", "--preset", "tiny", "--seed", "1", "--out", dir); err != nil {
		t.Fatal(err, out)
	}
	greedy := func(path string) []int {
		t.Helper()
		out, err := runCmd(t, "model", "generate", "--model", path, "--ids", "1,415,298", "--max-tokens", "6", "--ignore-eos")
		if err != nil {
			t.Fatal(err, out)
		}
		var g struct{ IDs []int }
		if err := json.Unmarshal([]byte(out), &g); err != nil {
			t.Fatal(err, out)
		}
		return g.IDs
	}
	want := greedy(dir)
	for _, tc := range []struct {
		args []string
		out  []string // substrings of the output
		// exact: the file's greedy tokens are the checkpoint's.
		exact bool
	}{
		{[]string{"convert"}, []string{"23 tensors, 38 MiB: F32 23 (38 MiB)"}, true},
		{[]string{"convert", "--type", "bf16"}, []string{"BF16 16 (19 MiB), F32 7 (10 KiB)"}, false},
		{[]string{"quantize", "--type", "q8_0"}, []string{"Q8_0 16 (10 MiB), F32 7 (10 KiB)"}, false},
		{[]string{"quantize", "--type", "Q4_K_M"}, []string{
			"Q8_0 14 (9.5 MiB), Q6_K 1 (210 KiB), Q4_K 1 (144 KiB), F32 7 (10 KiB)",
			"note: blk.1.ffn_gate_exps.weight: rows of 128 values are not a multiple of Q4_K's 256-value blocks; stored as Q8_0",
		}, false},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			path := filepath.Join(tmp, strings.Join(tc.args, "-")+".gguf")
			out, err := runCmd(t, append(append([]string{"model"}, tc.args...), "--model", dir, "--out", path)...)
			if err != nil {
				t.Fatal(err, out)
			}
			for _, s := range append(tc.out, "wrote "+path) {
				if !strings.Contains(out, s) {
					t.Errorf("output lacks %q:\n%s", s, out)
				}
			}
			if got := greedy(path); len(got) != len(want) || (tc.exact && !slices.Equal(got, want)) {
				t.Errorf("greedy tokens %v, safetensors %v", got, want)
			}
		})
	}

	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"quantize", "--type", "f16", "--model", dir, "--out", filepath.Join(tmp, "x.gguf")}, `--type "f16": want one of q8_0, q4_0, q4_k, q5_k, q6_k, q4_k_m, q5_k_m`},
		{[]string{"quantize", "--model", dir, "--out", filepath.Join(tmp, "x.gguf")}, `required flag(s) "type" not set`},
		{[]string{"convert", "--type", "q8_0", "--model", dir, "--out", filepath.Join(tmp, "x.gguf")}, "want f32, f16 or bf16 (quantize with moegrid model quantize)"},
		{[]string{"convert", "--model", dir, "--out", filepath.Join(tmp, "x.bin")}, "--out must name a .gguf file"},
	} {
		if out, err := runCmd(t, append([]string{"model"}, tc.args...)...); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%v: error %v, want %q\n%s", tc.args, err, tc.err, out)
		}
	}
}
