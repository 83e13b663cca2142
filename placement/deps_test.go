package placement

import (
	"go/build"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/moegrid/moegrid"

// moduleImports returns the moegrid packages that the package at
// module-relative path rel imports, directly or through other moegrid
// packages, tests excluded.
func moduleImports(t *testing.T, rel string) []string {
	t.Helper()
	seen := map[string]bool{}
	var visit func(rel string)
	visit = func(rel string) {
		pkg, err := build.ImportDir(filepath.Join("..", filepath.FromSlash(rel)), 0)
		if err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		for _, imp := range pkg.Imports {
			dep, ok := strings.CutPrefix(imp, module+"/")
			if !ok || seen[dep] {
				continue
			}
			seen[dep] = true
			visit(dep)
		}
	}
	visit(rel)
	deps := make([]string, 0, len(seen))
	for d := range seen {
		deps = append(deps, d)
	}
	slices.Sort(deps)
	return deps
}

// TestDependencies holds the arrows of DESIGN.md: the record is a leaf,
// and what reads a placement does not depend on the coordinator.
func TestDependencies(t *testing.T) {
	if deps := moduleImports(t, "placement"); len(deps) != 0 {
		t.Errorf("placement imports %v; it must be a leaf", deps)
	}
	for _, rel := range []string{"cluster", "router", "expertnode"} {
		for _, dep := range moduleImports(t, rel) {
			if dep == "coordinator" || strings.HasPrefix(dep, "coordinator/") || dep == "cmd" || strings.HasPrefix(dep, "cmd/") {
				t.Errorf("%s imports %s", rel, dep)
			}
		}
	}
	if !slices.Contains(moduleImports(t, "router"), "placement") {
		t.Error("router does not import placement: the check looks at the wrong packages")
	}
}
