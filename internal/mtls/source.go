// Package mtls is the runtime side of moegrid's mutual TLS: a certificate
// source that follows its files as they are replaced (Kubernetes Secrets,
// `moegrid certs issue`), the server and client tls.Configs built on it,
// and authorization by the role a verified peer certificate names, for gRPC
// (interceptors) and HTTP (middleware). Security is a component's settings
// as its flags give them (--tls-*, --etcd-*, --gossip-key-file,
// --insecure), validated with errors that name the flags.
//
// Rotation never touches a connection in flight: a handshake takes the
// certificate, key and CA bundle current at that moment, and the connection
// keeps them for its life. Only new handshakes see new files.
package mtls

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/moegrid/moegrid/internal/pki"
)

// Files names the files a Source reads.
type Files struct {
	Cert string // PEM leaf certificate (intermediates may follow it)
	Key  string // PEM private key of Cert
	CA   string // PEM bundle of the CAs whose certificates are trusted
}

// FilesFor is the files of the named leaf in a pki certificate directory.
func FilesFor(dir pki.Dir, name string) Files {
	return Files{Cert: dir.Cert(name), Key: dir.Key(name), CA: dir.CACert()}
}

// SourceConfig configures a Source.
type SourceConfig struct {
	Files Files
	// Interval is how often Run reads the files for changes; 0 means
	// DefaultInterval.
	Interval time.Duration
	// Logger receives reloads and rejected files; nil discards.
	Logger *slog.Logger
}

// DefaultInterval is how often a Source looks at its files by default: a
// Kubernetes Secret update takes about a minute to reach a pod anyway.
const DefaultInterval = 5 * time.Second

// Source holds the current certificate, key and CA pool read from Files.
// It polls the files' contents rather than watching events, which works
// the same on every file system and follows Kubernetes' swap of the
// ..data symlink, since every read resolves the links afresh.
//
// A Source is safe for concurrent use. Its certificate getters never block
// on I/O.
type Source struct {
	files    Files
	interval time.Duration
	log      *slog.Logger

	// reloadMu serialises reloads and protects lastSum and lastErr.
	reloadMu sync.Mutex
	// lastSum is the digest of the files last read, so that unchanged
	// files are not parsed again and a bad file is logged once.
	lastSum [sha256.Size]byte
	// lastErr is what was wrong with the files last read, nil if nothing.
	lastErr error

	// mu protects the fields below.
	mu     sync.RWMutex
	cert   *tls.Certificate
	leaf   *x509.Certificate
	pool   *x509.CertPool
	server *tls.Config // the per-handshake server config built from the above
	// httpServer is server with the client certificate optional.
	httpServer *tls.Config
}

// NewSource reads the files once and fails if they do not hold a usable
// certificate, key and CA bundle. It reloads them when Run or Reload is
// called.
func NewSource(cfg SourceConfig) (*Source, error) {
	if cfg.Files.Cert == "" || cfg.Files.Key == "" || cfg.Files.CA == "" {
		return nil, fmt.Errorf("mtls: source needs a certificate, key and CA file (got cert %q, key %q, CA %q)",
			cfg.Files.Cert, cfg.Files.Key, cfg.Files.CA)
	}
	if cfg.Interval < 0 {
		return nil, fmt.Errorf("mtls: interval %v: want a positive duration or 0 for the default", cfg.Interval)
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Source{files: cfg.Files, interval: cfg.Interval, log: cfg.Logger}
	if _, err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Run reloads the files every interval until ctx is done, then returns
// nil. A file that cannot be used is logged and the current certificate
// kept; the next change is tried again.
func (s *Source) Run(ctx context.Context) error {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		changed, err := s.Reload()
		if !changed {
			continue
		}
		if err != nil {
			s.log.Warn("mtls: kept the current certificate; new files rejected", "cert", s.files.Cert, "err", err)
			continue
		}
		leaf := s.Leaf()
		s.log.Info("mtls: loaded new certificate", "cert", s.files.Cert,
			"serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter)
	}
}

// Reload reads the files now. It reports whether their content differed
// from the last attempt, and an error, with the current certificate kept,
// if the new content is unusable. Unchanged files are not parsed again.
func (s *Source) Reload() (changed bool, err error) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	certPEM, keyPEM, caPEM, err := s.read()
	if err != nil {
		changed = s.lastErr == nil || s.lastErr.Error() != err.Error()
		s.lastSum, s.lastErr = [sha256.Size]byte{}, err
		return changed, err
	}
	sum := sha256.Sum256(bytes.Join([][]byte{certPEM, keyPEM, caPEM}, []byte{0}))
	if s.cert != nil && sum == s.lastSum {
		return false, s.lastErr
	}
	s.lastSum = sum
	cert, pool, err := parse(certPEM, keyPEM, caPEM)
	if err != nil {
		s.lastErr = fmt.Errorf("mtls: %s: %w", s.files.Cert, err)
		return true, s.lastErr
	}
	s.lastErr = nil
	server := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{*cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		// gRPC adds h2 itself; HTTP servers need both listed, since this
		// config replaces the one net/http filled in.
		NextProtos: []string{"h2", "http/1.1"},
		// A resumed session skips verifying the client's chain, which
		// would let a certificate outlive the removal of its CA from the
		// bundle. moegrid's connections are few and long, so every one
		// gets a full handshake.
		SessionTicketsDisabled: true,
	}
	httpServer := server.Clone()
	httpServer.ClientAuth = tls.VerifyClientCertIfGiven
	s.mu.Lock()
	s.cert, s.leaf, s.pool, s.server, s.httpServer = cert, cert.Leaf, pool, server, httpServer
	s.mu.Unlock()
	return true, nil
}

func (s *Source) read() (certPEM, keyPEM, caPEM []byte, err error) {
	if certPEM, err = os.ReadFile(s.files.Cert); err != nil {
		return nil, nil, nil, fmt.Errorf("mtls: %w", err)
	}
	if keyPEM, err = os.ReadFile(s.files.Key); err != nil {
		return nil, nil, nil, fmt.Errorf("mtls: %w", err)
	}
	if caPEM, err = os.ReadFile(s.files.CA); err != nil {
		return nil, nil, nil, fmt.Errorf("mtls: %w", err)
	}
	return certPEM, keyPEM, caPEM, nil
}

func parse(certPEM, keyPEM, caPEM []byte) (*tls.Certificate, *x509.CertPool, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, err
	}
	if now := time.Now(); now.After(cert.Leaf.NotAfter) {
		return nil, nil, fmt.Errorf("certificate expired at %s", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, nil, errors.New("CA bundle holds no certificate")
	}
	return &cert, pool, nil
}

// Certificate is the current certificate and key.
func (s *Source) Certificate() *tls.Certificate {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cert
}

// Leaf is the current parsed leaf certificate.
func (s *Source) Leaf() *x509.Certificate {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.leaf
}

// CAPool is the current pool of trusted CAs.
func (s *Source) CAPool() *x509.CertPool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.pool
}

func (s *Source) serverConfig() *tls.Config {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.server
}

func (s *Source) httpServerConfig() *tls.Config {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.httpServer
}

// RunSources runs every non-nil source until ctx is done and returns nil
// when they have all stopped, at once if there are none: a component's
// certificate sources, some of which its settings leave out.
func RunSources(ctx context.Context, srcs ...*Source) error {
	var wg sync.WaitGroup
	for _, s := range srcs {
		if s == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s.Run(ctx)
		}()
	}
	wg.Wait()
	return nil
}
