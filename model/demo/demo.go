// Package demo ships moegrid's demo model: a small Mixtral-architecture
// model (8 experts, top-2) trained on the King James Bible, so that
// `moegrid up` serves readable English with nothing to download.
//
// The checkpoint (config.json, generation_config.json, model.safetensors in
// BF16, tokenizer.json) is embedded in the binary rather than shipped beside
// it: moegrid stays one static file, the FROM-scratch container image carries
// the model without another layer or path to keep in step, and an installed
// binary cannot be separated from its model. It costs the binary the size of
// the files (about 8 MB). hack/train holds the script that trains it, from
// Debian's bible-kjv package alone, and its measured figures; kjv/README.md
// states the licence.
package demo

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// Name is the demo model's name, the prefix of its cache directory.
const Name = "kjv-moe"

//go:embed kjv/config.json kjv/generation_config.json kjv/model.safetensors kjv/tokenizer.json kjv/README.md
var files embed.FS

const root = "kjv"

// FS returns the checkpoint's files, at the root of the returned file system.
func FS() fs.FS {
	sub, err := fs.Sub(files, root)
	if err != nil {
		panic(err) // root is a constant directory of the embedded tree
	}
	return sub
}

// Hash returns the hex SHA-256 of the checkpoint: of every file's name and
// contents, in name order. Two binaries with the same Hash ship the same model.
var Hash = sync.OnceValue(func() string {
	h := sha256.New()
	entries, err := fs.ReadDir(FS(), ".")
	if err != nil {
		panic(err)
	}
	for _, e := range entries {
		data, err := fs.ReadFile(FS(), e.Name())
		if err != nil {
			panic(err)
		}
		fmt.Fprintf(h, "%s\x00%d\x00", e.Name(), len(data))
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil))
})

// Write writes the checkpoint's files into dir, creating it if needed.
func Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	entries, err := fs.ReadDir(FS(), ".")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	for _, e := range entries {
		data, err := fs.ReadFile(FS(), e.Name())
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), data, 0o644); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
	}
	return nil
}

// Ensure returns the directory under cacheDir/models that holds the
// checkpoint, writing it there first if it is missing. The directory is named
// after Hash, so a binary with another model never reuses a stale copy, and
// it is filled under a temporary name and renamed, so a reader never sees it
// half written. Concurrent callers are safe: the first rename wins.
func Ensure(cacheDir string) (string, error) {
	dir := filepath.Join(cacheDir, "models", Name+"-"+Hash()[:16])
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), Name+".tmp-")
	if err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("demo: %w", err)
	}
	if err := Write(tmp); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		if _, serr := os.Stat(filepath.Join(dir, "config.json")); serr == nil {
			return dir, nil
		}
		return "", fmt.Errorf("demo: %w", err)
	}
	return dir, nil
}
