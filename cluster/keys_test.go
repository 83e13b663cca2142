package cluster

import (
	"errors"
	"strings"
	"testing"
)

func TestNewKeys(t *testing.T) {
	for _, tc := range []struct {
		prefix, want, err string
	}{
		{prefix: "/moegrid/default/", want: "/moegrid/default/"},
		{prefix: "/moegrid/prod", want: "/moegrid/prod/"},
		{prefix: "/a/", want: "/a/"},
		{prefix: "/team-1/moe_grid.v2/", want: "/team-1/moe_grid.v2/"},
		{prefix: "", err: "empty"},
		{prefix: "/", err: "empty segment"},
		{prefix: "moegrid/", err: "must start with '/'"},
		{prefix: "/moegrid//x/", err: "empty segment"},
		{prefix: "/moe grid/", err: "character ' '"},
		{prefix: "/moegrid/../x/", err: `segment ".."`},
		{prefix: "/" + strings.Repeat("a", 300) + "/", err: "longer than"},
	} {
		t.Run(tc.prefix, func(t *testing.T) {
			k, err := NewKeys(tc.prefix)
			if tc.err != "" {
				if !errors.Is(err, ErrInvalidPrefix) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("NewKeys(%q) = %v, want ErrInvalidPrefix containing %q", tc.prefix, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewKeys(%q): %v", tc.prefix, err)
			}
			if k.Prefix() != tc.want {
				t.Errorf("Prefix() = %q, want %q", k.Prefix(), tc.want)
			}
		})
	}
}

func TestKeysSchema(t *testing.T) {
	k, err := NewKeys(DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key  string
		kind keyKind
		id   string
	}{
		{k.Meta(), kindMeta, ""},
		{k.Node("node-1"), kindNode, "node-1"},
		{k.Placement(), kindPlacement, ""},
		{k.Election() + "/694d7a3b", kindElection, "694d7a3b"},
		{k.Drain("node-1"), kindDrain, "node-1"},
		{k.Load("router-a"), kindLoad, "router-a"},
		{k.Nodes() + "bad id", kindForeign, "bad id"},
		{k.Prefix() + "other", kindForeign, ""},
		{"/elsewhere/meta", kindForeign, ""},
	} {
		kind, id := k.kind(tc.key)
		if kind != tc.kind || id != tc.id {
			t.Errorf("kind(%q) = %v, %q; want %v, %q", tc.key, kind, id, tc.kind, tc.id)
		}
	}
	if got := k.Node("n"); got != "/moegrid/default/nodes/n" {
		t.Errorf("Node = %q", got)
	}
}

func TestValidateID(t *testing.T) {
	for _, ok := range []string{"a", "node-1", "Node_2.x", strings.Repeat("a", 128)} {
		if err := ValidateID(ok); err != nil {
			t.Errorf("ValidateID(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", ".a", "a/b", "a b", "ü", strings.Repeat("a", 129), "a\n"} {
		if err := ValidateID(bad); !errors.Is(err, ErrInvalidID) {
			t.Errorf("ValidateID(%q) = %v, want ErrInvalidID", bad, err)
		}
	}
}

func FuzzNewKeys(f *testing.F) {
	for _, s := range []string{"/moegrid/default/", "/", "", "/a//b", "/a/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, prefix string) {
		k, err := NewKeys(prefix)
		if err != nil {
			return
		}
		p := k.Prefix()
		if !strings.HasPrefix(p, "/") || !strings.HasSuffix(p, "/") || strings.Contains(p, "//") {
			t.Fatalf("NewKeys(%q) accepted %q", prefix, p)
		}
		// Every key of the schema classifies as itself.
		if kind, id := k.kind(k.Node("n1")); kind != kindNode || id != "n1" {
			t.Fatalf("prefix %q: node key classified %v %q", p, kind, id)
		}
		// Normalisation is idempotent.
		if k2, err := NewKeys(p); err != nil || k2 != k {
			t.Fatalf("NewKeys(%q) = %v, %v; want %v", p, k2, err, k)
		}
	})
}
