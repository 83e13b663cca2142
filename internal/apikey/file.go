package apikey

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// APIs a key may be restricted to.
const (
	APIGenerate    = "generate"    // gRPC moegrid.v1.Generation/Generate
	APICompletions = "completions" // POST /v1/completions
	APIChat        = "chat"        // POST /v1/chat/completions
	APIModels      = "models"      // GET /v1/models
)

var knownAPIs = []string{APIGenerate, APICompletions, APIChat, APIModels}

// prefix starts every key, so that a key is recognisable in a config or a
// leaked log line.
const prefix = "mgk_"

// secretBytes is the entropy of a key.
const secretBytes = 32

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]{0,63}$`)

// File is the key file: JSON, {"keys": [Entry, ...]}.
type File struct {
	Keys []Entry `json:"keys"`
}

// Entry is one key as the file holds it.
type Entry struct {
	// ID names the key in logs and metrics: 1 to 64 letters, digits,
	// '.' and '-', starting with a letter or digit.
	ID string `json:"id"`
	// SHA256 is the hex SHA-256 of the key string.
	SHA256 string `json:"sha256"`
	// MaxInFlight bounds the key's requests running at once; 0 = unlimited.
	MaxInFlight int `json:"max_in_flight,omitempty"`
	// TokensPerMinute bounds the prompt and completion tokens the key
	// uses per minute; 0 = unlimited.
	TokensPerMinute int `json:"tokens_per_minute,omitempty"`
	// Allow lists the APIs the key may call (APIGenerate, ...); empty
	// allows all.
	Allow []string `json:"allow,omitempty"`
	// Disabled keys are refused with PermissionDenied.
	Disabled bool `json:"disabled,omitempty"`
}

// maxFileBytes bounds the key file read.
const maxFileBytes = 8 << 20

// Parse reads a key file strictly: unknown fields, trailing data, a
// duplicate or malformed id, a hash that is not 64 hex digits, a negative
// limit or an unknown API are errors that name the entry.
func Parse(data []byte) (File, error) {
	var f File
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return File{}, fmt.Errorf("apikey: key file: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return File{}, errors.New("apikey: key file: data after the JSON object")
	}
	seen := make(map[string]bool, len(f.Keys))
	for i, e := range f.Keys {
		if err := e.validate(); err != nil {
			return File{}, fmt.Errorf("apikey: key file: keys[%d]: %w", i, err)
		}
		if seen[e.ID] {
			return File{}, fmt.Errorf("apikey: key file: keys[%d]: duplicate id %q", i, e.ID)
		}
		seen[e.ID] = true
	}
	return f, nil
}

func (e Entry) validate() error {
	switch {
	case !idPattern.MatchString(e.ID):
		return fmt.Errorf("id %q must be 1 to 64 letters, digits, '.' or '-', starting with a letter or digit", e.ID)
	case len(e.SHA256) != 2*sha256.Size:
		return fmt.Errorf("key %q: sha256 must be %d hex digits, got %d characters", e.ID, 2*sha256.Size, len(e.SHA256))
	case e.MaxInFlight < 0:
		return fmt.Errorf("key %q: max_in_flight %d is negative", e.ID, e.MaxInFlight)
	case e.TokensPerMinute < 0:
		return fmt.Errorf("key %q: tokens_per_minute %d is negative", e.ID, e.TokensPerMinute)
	}
	if _, err := hex.DecodeString(e.SHA256); err != nil {
		return fmt.Errorf("key %q: sha256 is not hex: %w", e.ID, err)
	}
	for _, a := range e.Allow {
		if !slices.Contains(knownAPIs, a) {
			return fmt.Errorf("key %q: unknown API %q in allow (known: %v)", e.ID, a, knownAPIs)
		}
	}
	return nil
}

// ReadFile reads and parses the key file at path.
func ReadFile(path string) (File, error) {
	data, err := readLimited(path)
	if err != nil {
		return File{}, err
	}
	return Parse(data)
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("apikey: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("apikey: read %s: %w", path, err)
	}
	if len(data) > maxFileBytes {
		return nil, fmt.Errorf("apikey: %s is over %d bytes", path, maxFileBytes)
	}
	return data, nil
}

// WriteFile writes f to path atomically (a temporary file renamed over
// it) with mode 0600.
func WriteFile(path string, f File) error {
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("apikey: %w", err)
	}
	if _, err := Parse(data); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("apikey: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("apikey: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("apikey: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("apikey: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("apikey: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("apikey: %w", err)
	}
	return nil
}

// NewKey returns a fresh key for id and the entry (without limits) that
// accepts it.
func NewKey(id string) (key string, e Entry, err error) {
	if !idPattern.MatchString(id) {
		return "", Entry{}, fmt.Errorf("apikey: id %q must be 1 to 64 letters, digits, '.' or '-', starting with a letter or digit", id)
	}
	secret := make([]byte, secretBytes)
	if _, err := rand.Read(secret); err != nil {
		return "", Entry{}, fmt.Errorf("apikey: %w", err)
	}
	key = prefix + id + "_" + hex.EncodeToString(secret)
	return key, Entry{ID: id, SHA256: Hash(key)}, nil
}

// Hash is the hex SHA-256 of key, as an Entry holds it.
func Hash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// keyID returns the id a key string names, or false if it is not shaped
// like a key.
func keyID(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return "", false
	}
	i := strings.LastIndexByte(rest, '_')
	if i < 0 {
		return "", false
	}
	id, secret := rest[:i], rest[i+1:]
	if !idPattern.MatchString(id) || len(secret) != 2*secretBytes {
		return "", false
	}
	if _, err := hex.DecodeString(secret); err != nil {
		return "", false
	}
	return id, true
}
