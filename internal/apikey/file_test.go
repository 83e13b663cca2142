package apikey

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var testHash = Hash("mgk_a_" + strings.Repeat("0", 64))

func TestParse(t *testing.T) {
	good := `{"keys":[{"id":"alice","sha256":"` + testHash + `","max_in_flight":2,"tokens_per_minute":600,"allow":["chat","models"]},
		{"id":"bob.ci-1","sha256":"` + testHash + `","disabled":true}]}`
	f, err := Parse([]byte(good))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := File{Keys: []Entry{
		{ID: "alice", SHA256: testHash, MaxInFlight: 2, TokensPerMinute: 600, Allow: []string{"chat", "models"}},
		{ID: "bob.ci-1", SHA256: testHash, Disabled: true},
	}}
	if d := cmp.Diff(want, f); d != "" {
		t.Errorf("Parse (-want +got):\n%s", d)
	}

	entry := func(fields string) string { return `{"keys":[{` + fields + `}]}` }
	h := `"sha256":"` + testHash + `"`
	for _, tc := range []struct {
		name, in, wantErr string
	}{
		{"not JSON", `{`, "unexpected EOF"},
		{"unknown field", `{"keys":[],"extra":1}`, `unknown field "extra"`},
		{"unknown entry field", entry(`"id":"a",` + h + `,"key":"x"`), `unknown field "key"`},
		{"trailing data", `{"keys":[]} {}`, "data after the JSON object"},
		{"duplicate id", `{"keys":[{"id":"a",` + h + `},{"id":"a",` + h + `}]}`, `keys[1]: duplicate id "a"`},
		{"empty id", entry(`"id":"",` + h), `keys[0]: id ""`},
		{"underscore in id", entry(`"id":"a_b",` + h), `id "a_b"`},
		{"short hash", entry(`"id":"a","sha256":"abcd"`), "sha256 must be 64 hex digits, got 4"},
		{"hash not hex", entry(`"id":"a","sha256":"` + strings.Repeat("zz", 32) + `"`), "sha256 is not hex"},
		{"negative in flight", entry(`"id":"a",` + h + `,"max_in_flight":-1`), "max_in_flight -1 is negative"},
		{"negative tokens", entry(`"id":"a",` + h + `,"tokens_per_minute":-5`), "tokens_per_minute -5 is negative"},
		{"unknown API", entry(`"id":"a",` + h + `,"allow":["embeddings"]`), `unknown API "embeddings"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Parse(%s) = %v, want an error containing %q", tc.in, err, tc.wantErr)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"keys":[{"id":"alice","sha256":"` + testHash + `","max_in_flight":2,"allow":["chat"]}]}`))
	f.Add([]byte(`{"keys":[]}`))
	f.Add([]byte(`{"keys":[{"id":"a","sha256":"00"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse(data)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, e := range file.Keys {
			if err := e.validate(); err != nil || seen[e.ID] {
				t.Fatalf("Parse accepted entry %+v: %v, duplicate %t", e, err, seen[e.ID])
			}
			seen[e.ID] = true
		}
	})
}

func TestNewKey(t *testing.T) {
	key, e, err := NewKey("svc.prod-1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(key, "mgk_svc.prod-1_") {
		t.Errorf("key %q lacks the prefix and id", key)
	}
	if id, ok := keyID(key); !ok || id != "svc.prod-1" {
		t.Errorf("keyID(%q) = %q, %t", key, id, ok)
	}
	if e.ID != "svc.prod-1" || e.SHA256 != Hash(key) || strings.Contains(e.SHA256, key) {
		t.Errorf("entry %+v does not hold the key's hash", e)
	}
	other, _, _ := NewKey("svc.prod-1")
	if other == key {
		t.Error("two keys are equal")
	}
	if _, _, err := NewKey("bad_id"); err == nil {
		t.Error("NewKey accepted an id with '_'")
	}
	for _, bad := range []string{"", "mgk_", "mgk_a_", "mgk_a_" + strings.Repeat("0", 63), "mgk_a_" + strings.Repeat("g", 64), "sk_a_" + strings.Repeat("0", 64), "mgk__" + strings.Repeat("0", 64)} {
		if id, ok := keyID(bad); ok {
			t.Errorf("keyID(%q) = %q, true", bad, id)
		}
	}
}

func TestWriteFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	want := File{Keys: []Entry{{ID: "a", SHA256: testHash, TokensPerMinute: 10}}}
	if err := WriteFile(path, want); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	got, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("read back (-want +got):\n%s", d)
	}
	if err := WriteFile(path, File{Keys: []Entry{{ID: "a"}}}); err == nil {
		t.Error("WriteFile wrote an invalid entry")
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("directory holds %d files, want only the key file", len(entries))
	}
}

// FuzzKeyID: a presented key, untrusted, either names an id it is built
// from or is refused, never a panic.
func FuzzKeyID(f *testing.F) {
	key, _, _ := NewKey("svc-1")
	f.Add(key)
	f.Add("mgk_a_b_" + strings.Repeat("0", 64))
	f.Add("Bearer x")
	f.Fuzz(func(t *testing.T, key string) {
		id, ok := keyID(key)
		if !ok {
			return
		}
		if !idPattern.MatchString(id) || !strings.HasPrefix(key, prefix+id+"_") || len(key) != len(prefix)+len(id)+1+2*secretBytes {
			t.Fatalf("keyID(%q) = %q", key, id)
		}
	})
}
