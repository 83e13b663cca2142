package main

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/internal/apikey"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// TestKeys creates keys with `moegrid keys create`, checks that a Guard
// over the file accepts exactly the printed keys, and lists them.
func TestKeys(t *testing.T) {
	file := filepath.Join(t.TempDir(), "keys.json")
	create := func(args ...string) string {
		t.Helper()
		out, err := runCmd(t, append([]string{"keys", "create", "--file", file}, args...)...)
		if err != nil {
			t.Fatalf("keys create %v: %v", args, err)
		}
		return strings.TrimSpace(out)
	}
	alice := create("--id", "alice", "--max-in-flight", "2", "--tokens-per-minute", "6000", "--allow", "chat,models")
	bob := create("--id", "bob")
	st, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
	data, _ := os.ReadFile(file)
	if strings.Contains(string(data), alice) || strings.Contains(string(data), bob) {
		t.Error("the key file holds a key, not only its hash")
	}

	g, err := apikey.New(apikey.Config{File: file}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key, api string
		want     error
	}{
		{alice, apikey.APIChat, nil},
		{alice, apikey.APIGenerate, apikey.ErrNotAllowed},
		{bob, apikey.APIGenerate, nil},
	} {
		a, err := g.Admit(tc.key, tc.api)
		if !errors.Is(err, tc.want) {
			t.Errorf("Admit(%s) = %v, want %v", tc.api, err, tc.want)
		}
		a.Release()
	}

	// Creating an id again replaces its key.
	bob2 := create("--id", "bob")
	if _, err := g.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Admit(bob, apikey.APIGenerate); !errors.Is(err, apikey.ErrInvalidKey) {
		t.Errorf("replaced key: %v, want ErrInvalidKey", err)
	}
	if a, err := g.Admit(bob2, apikey.APIGenerate); err != nil {
		t.Errorf("new key: %v", err)
	} else {
		a.Release()
	}

	out, err := runCmd(t, "keys", "list", "--file", file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[1], "alice") || !strings.Contains(lines[1], "6000") || !strings.Contains(lines[1], "chat,models") ||
		!strings.Contains(lines[2], "bob") || !strings.Contains(lines[2], "unlimited") {
		t.Errorf("keys list:\n%s", out)
	}
	if strings.Contains(out, apikey.Hash(alice)) {
		t.Error("keys list prints hashes")
	}

	for _, bad := range [][]string{
		{"keys", "create", "--file", file, "--id", "bad_id"},
		{"keys", "create", "--file", file, "--id", "c", "--allow", "embeddings"},
		{"keys", "create", "--file", file, "--id", "c", "--max-in-flight", "-1"},
		{"keys", "list", "--file", filepath.Join(t.TempDir(), "missing.json")},
	} {
		if _, err := runCmd(t, bad...); err == nil {
			t.Errorf("%v succeeded", bad)
		}
	}
}

// TestGenerateAPIKey: `moegrid generate` sends --api-key, or
// MOEGRID_API_KEY, as a bearer token that a guarded server accepts.
func TestGenerateAPIKey(t *testing.T) {
	file := filepath.Join(t.TempDir(), "keys.json")
	key, e, err := apikey.NewKey("cli")
	if err != nil {
		t.Fatal(err)
	}
	if err := apikey.WriteFile(file, apikey.File{Keys: []apikey.Entry{e}}); err != nil {
		t.Fatal(err)
	}
	g, err := apikey.New(apikey.Config{File: file}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.StreamInterceptor(g.StreamServerInterceptor(func(string) string { return apikey.APIGenerate })))
	moegridv1.RegisterGenerationServer(srv, &fakeRouter{tokens: 1})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	addr := lis.Addr().String()

	if _, err := runCmd(t, "generate", "--insecure", "--addr", addr, "hi"); status.Code(err) != codes.Unauthenticated {
		t.Errorf("without a key: %v, want Unauthenticated", err)
	}
	if _, err := runCmd(t, "generate", "--insecure", "--addr", addr, "--api-key", key, "hi"); err != nil {
		t.Errorf("--api-key: %v", err)
	}
	t.Setenv("MOEGRID_API_KEY", key)
	if _, err := runCmd(t, "generate", "--insecure", "--addr", addr, "hi"); err != nil {
		t.Errorf("MOEGRID_API_KEY: %v", err)
	}
}
