package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// GossipKeySize is the length of a memberlist encryption key: 32 bytes
// selects AES-256.
const GossipKeySize = 32

// Errors of a certificate directory.
var (
	ErrNoCA     = errors.New("pki: no CA in directory (run `moegrid certs init` first)")
	ErrCAExists = errors.New("pki: directory already has a CA")
)

// Dir is a certificate directory. Its layout:
//
//	ca.crt          the CA certificate, the bundle every component trusts
//	ca.key          the CA key (0600); only `moegrid certs` needs it
//	<name>.crt      a leaf certificate
//	<name>.key      its key (0600)
//	gossip.key      the memberlist key, base64 of 32 random bytes (0600)
type Dir string

// CACert is the path of the CA certificate.
func (d Dir) CACert() string { return filepath.Join(string(d), "ca.crt") }

// CAKey is the path of the CA key.
func (d Dir) CAKey() string { return filepath.Join(string(d), "ca.key") }

// Cert is the path of the named leaf certificate.
func (d Dir) Cert(name string) string { return filepath.Join(string(d), name+".crt") }

// Key is the path of the named leaf key.
func (d Dir) Key(name string) string { return filepath.Join(string(d), name+".key") }

// GossipKey is the path of the gossip key.
func (d Dir) GossipKey() string { return filepath.Join(string(d), "gossip.key") }

// Init makes the directory (0700) with a new CA valid for the given
// duration and a new gossip key. It refuses a directory that has a CA
// already, since replacing it would orphan every certificate it signed.
func (d Dir) Init(validity time.Duration) (*CA, error) {
	if _, err := os.Stat(d.CACert()); err == nil {
		return nil, fmt.Errorf("%w: %s", ErrCAExists, d.CACert())
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("pki: %w", err)
	}
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	ca, err := NewCA("moegrid cluster CA", validity)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(ca.Key)
	if err != nil {
		return nil, err
	}
	gossip, err := NewGossipKey()
	if err != nil {
		return nil, err
	}
	// The key goes first: a ca.crt without its key would make the directory
	// look initialised when nothing could be issued from it.
	if err := writeFileAtomic(d.CAKey(), keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(d.GossipKey(), []byte(base64.StdEncoding.EncodeToString(gossip)+"\n"), 0o600); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(d.CACert(), encodeCert(ca.Cert), 0o644); err != nil {
		return nil, err
	}
	return ca, nil
}

// LoadCA reads the directory's CA certificate and key.
func (d Dir) LoadCA() (*CA, error) {
	certPEM, err := os.ReadFile(d.CACert())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNoCA, d)
	}
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	keyPEM, err := os.ReadFile(d.CAKey())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s has ca.crt but no ca.key", ErrNoCA, d)
	}
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", d.CACert(), err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("pki: %s is not a CA certificate", d.CACert())
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", d.CAKey(), err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("pki: %s does not belong to %s", d.CAKey(), d.CACert())
	}
	return &CA{Cert: cert, Key: key}, nil
}

// WriteKeyPair writes a leaf as <name>.crt and <name>.key, replacing any
// earlier pair of that name. The key is written first, so that a process
// that reloads on a changed certificate finds its matching key in place.
func (d Dir) WriteKeyPair(name string, kp *KeyPair) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if err := writeFileAtomic(d.Key(name), kp.KeyPEM, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(d.Cert(name), kp.CertPEM, 0o644)
}

// NewGossipKey returns a fresh memberlist encryption key.
func NewGossipKey() ([]byte, error) {
	k := make([]byte, GossipKeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("pki: gossip key: %w", err)
	}
	return k, nil
}

// ReadGossipKey reads a gossip key file: base64 of GossipKeySize bytes,
// surrounding white space ignored.
func ReadGossipKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: gossip key: %w", err)
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("pki: gossip key %s: not base64: %w", path, err)
	}
	if len(k) != GossipKeySize {
		return nil, fmt.Errorf("pki: gossip key %s: %d bytes, want %d", path, len(k), GossipKeySize)
	}
	return k, nil
}

// ReadGossipKeyring reads a gossip keyring file: one key per line, each as
// ReadGossipKey reads it, blank lines ignored. The first key is the
// primary, which encrypts; every key decrypts. Rotation adds a new key as a
// second line everywhere, then moves it first, then drops the old one, a
// rolling restart after each step.
func ReadGossipKeyring(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: gossip keyring: %w", err)
	}
	var keys [][]byte
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		k, err := base64.StdEncoding.DecodeString(line)
		if err != nil {
			return nil, fmt.Errorf("pki: gossip keyring %s line %d: not base64: %w", path, i+1, err)
		}
		if len(k) != GossipKeySize {
			return nil, fmt.Errorf("pki: gossip keyring %s line %d: %d bytes, want %d", path, i+1, len(k), GossipKeySize)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("pki: gossip keyring %s holds no key", path)
	}
	return keys, nil
}

// ParseCertPEM parses the first certificate of a PEM file.
func ParseCertPEM(b []byte) (*x509.Certificate, error) {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return nil, errors.New("no CERTIFICATE block")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

func parseKeyPEM(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("no PRIVATE KEY block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key of type %T cannot sign", k)
	}
	return s, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}

// writeFileAtomic writes data to a temporary file beside path and renames
// it over path, so readers see the old file or the new one, never a part.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	tmp := f.Name()
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	return nil
}
