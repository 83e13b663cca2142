package model

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/moegrid/moegrid/model/safetensors"
)

// fingerprintSample is how many leading bytes of each tensor the
// fingerprint reads: enough to tell checkpoints of the same shape apart
// (different seeds, fine-tunes) without reading the weights.
const fingerprintSample = 64

// Fingerprint identifies a checkpoint: a SHA-256 over config.json and, for
// every tensor in name order, its name, dtype, shape and first bytes. It does
// not depend on how the tensors are split into files. The router and expert
// nodes compare fingerprints so that a node serving another checkpoint is
// never mixed into a model. A GGUF checkpoint's fingerprint is taken over
// its own tensors, so it never matches a safetensors checkpoint's.
func Fingerprint(dir string) (string, error) {
	if IsGGUF(dir) {
		return ggufFingerprint(dir)
	}
	h := sha256.New()
	cfg, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return "", fmt.Errorf("model: fingerprint: %w", err)
	}
	h.Write(cfg)
	ck, err := safetensors.OpenCheckpoint(dir, nil)
	if err != nil {
		return "", fmt.Errorf("model: fingerprint: %w", err)
	}
	defer ck.Close()
	for _, name := range ck.Names() {
		t, err := ck.Tensor(name)
		if err != nil {
			return "", fmt.Errorf("model: fingerprint: %w", err)
		}
		fmt.Fprintf(h, "\x00%s\x00%s\x00%v\x00", name, t.DType, t.Shape)
		h.Write(t.Data[:min(len(t.Data), fingerprintSample)])
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}
