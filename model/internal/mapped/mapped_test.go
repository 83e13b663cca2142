package mapped_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moegrid/moegrid/model/internal/mapped"
)

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	full := filepath.Join(dir, "full")
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(full, []byte("weights"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	data, unmap, err := mapped.Open(full)
	if err != nil || string(data) != "weights" {
		t.Fatalf("Open(full) = %q, %v; want the file's bytes", data, err)
	}
	if err := unmap(); err != nil {
		t.Errorf("unmap: %v", err)
	}
	data, unmap, err = mapped.Open(empty)
	if err != nil || len(data) != 0 {
		t.Fatalf("Open(empty) = %q, %v; want no bytes", data, err)
	}
	if err := unmap(); err != nil {
		t.Errorf("unmap of an empty file: %v", err)
	}
	for path, want := range map[string]string{
		dir:                        "not a regular file",
		filepath.Join(dir, "none"): "no such file",
	} {
		if _, _, err := mapped.Open(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%s) error %v, want one containing %q", path, err, want)
		}
	}
}
