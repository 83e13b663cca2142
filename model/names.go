package model

import (
	"fmt"
	"strconv"
	"strings"
)

// Hugging Face tensor names of a Mixtral checkpoint, as stored on disk.
const (
	EmbedTensor  = "model.embed_tokens.weight"
	NormTensor   = "model.norm.weight"
	LMHeadTensor = "lm_head.weight"
)

func layerTensor(layer int, suffix string) string {
	return fmt.Sprintf("model.layers.%d.%s", layer, suffix)
}

// ExpertTensors returns the names of w1, w2 and w3 of one expert in one
// layer.
func ExpertTensors(layer, expert int) [3]string {
	p := fmt.Sprintf("model.layers.%d.block_sparse_moe.experts.%d.", layer, expert)
	return [3]string{p + "w1.weight", p + "w2.weight", p + "w3.weight"}
}

// ParseExpertTensor reports whether name is an expert weight and, if so, of
// which layer and expert.
func ParseExpertTensor(name string) (layer, expert int, ok bool) {
	rest, found := strings.CutPrefix(name, "model.layers.")
	if !found {
		return 0, 0, false
	}
	l, rest, found := strings.Cut(rest, ".")
	if !found {
		return 0, 0, false
	}
	rest, found = strings.CutPrefix(rest, "block_sparse_moe.experts.")
	if !found {
		return 0, 0, false
	}
	e, rest, found := strings.Cut(rest, ".")
	if !found || (rest != "w1.weight" && rest != "w2.weight" && rest != "w3.weight") {
		return 0, 0, false
	}
	layer, lok := moduleIndex(l)
	expert, eok := moduleIndex(e)
	if !lok || !eok {
		return 0, 0, false
	}
	return layer, expert, true
}

// moduleIndex parses an index of a PyTorch module list as it appears in a
// tensor name: plain decimal, no sign, no leading zeros. Other spellings
// ("01", "+1") name no module and must not alias one.
func moduleIndex(s string) (int, bool) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || strconv.Itoa(n) != s {
		return 0, false
	}
	return n, true
}
