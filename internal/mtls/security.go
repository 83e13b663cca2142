package mtls

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/moegrid/moegrid/internal/pki"
)

// Security is a component's transport security as its flags name it: its
// identity and trusted CAs (--tls-cert, --tls-key, --tls-ca), what it shows
// etcd (--etcd-cert, --etcd-key, --etcd-ca, --etcd-username,
// --etcd-password-file) and the gossip keyring (--gossip-key-file), or
// Insecure (--insecure) for plaintext everywhere.
type Security struct {
	// Insecure turns every check off: plaintext gRPC, HTTP, etcd and
	// gossip. It excludes every file below.
	Insecure bool
	// Files are the component's certificate, key and CA bundle.
	Files Files
	// Etcd are the files used with https:// etcd endpoints; an empty field
	// takes the one of Files.
	Etcd Files
	// EtcdUsername and EtcdPasswordFile log in to etcd when its auth is
	// on; the file holds the password (surrounding white space ignored).
	EtcdUsername     string
	EtcdPasswordFile string
	// GossipKeyFile holds the memberlist keyring (see pki.ReadGossipKeyring).
	GossipKeyFile string
}

// Validate checks that s is either insecure or names a complete identity,
// with an error naming the flags to set. needGossip says whether the
// component gossips, and so needs --gossip-key-file.
func (s Security) Validate(needGossip bool) error {
	if s.Insecure {
		var set []string
		for flag, v := range map[string]string{
			"--tls-cert": s.Files.Cert, "--tls-key": s.Files.Key, "--tls-ca": s.Files.CA,
			"--etcd-cert": s.Etcd.Cert, "--etcd-key": s.Etcd.Key, "--etcd-ca": s.Etcd.CA,
			"--gossip-key-file": s.GossipKeyFile,
		} {
			if v != "" {
				set = append(set, flag)
			}
		}
		if len(set) > 0 {
			slices.Sort(set)
			return fmt.Errorf("mtls: --insecure excludes %s", strings.Join(set, ", "))
		}
		return nil
	}
	var missing []string
	for _, f := range []struct{ flag, v string }{
		{"--tls-cert", s.Files.Cert}, {"--tls-key", s.Files.Key}, {"--tls-ca", s.Files.CA},
	} {
		if f.v == "" {
			missing = append(missing, f.flag)
		}
	}
	if needGossip && s.GossipKeyFile == "" {
		missing = append(missing, "--gossip-key-file")
	}
	if len(missing) > 0 {
		return fmt.Errorf("mtls: no TLS identity: set %s (make them with `moegrid certs all`), or pass --insecure to run in plaintext", strings.Join(missing, ", "))
	}
	if (s.EtcdUsername == "") != (s.EtcdPasswordFile == "") {
		return errors.New("mtls: --etcd-username and --etcd-password-file go together")
	}
	return nil
}

// EtcdFiles is the files shown to etcd, the component's own where the etcd
// ones are not set.
func (s Security) EtcdFiles() Files {
	f := s.Etcd
	if f.Cert == "" {
		f.Cert = s.Files.Cert
	}
	if f.Key == "" {
		f.Key = s.Files.Key
	}
	if f.CA == "" {
		f.CA = s.Files.CA
	}
	return f
}

// Source reads the component's certificate files; nil when insecure. The
// caller runs it (Source.Run) to follow the files.
func (s Security) Source(log *slog.Logger) (*Source, error) {
	if s.Insecure {
		return nil, nil
	}
	return NewSource(SourceConfig{Files: s.Files, Logger: log})
}

// EtcdSource reads the files shown to etcd: src itself when they are the
// component's own, a new Source otherwise; nil when insecure.
func (s Security) EtcdSource(src *Source, log *slog.Logger) (*Source, error) {
	if s.Insecure {
		return nil, nil
	}
	if f := s.EtcdFiles(); f != s.Files || src == nil {
		return NewSource(SourceConfig{Files: f, Logger: log})
	}
	return src, nil
}

// EtcdPassword reads the etcd password file; "" when none is set.
func (s Security) EtcdPassword() (string, error) {
	if s.EtcdPasswordFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(s.EtcdPasswordFile)
	if err != nil {
		return "", fmt.Errorf("mtls: etcd password: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// GossipKeyring reads the gossip keyring; nil when insecure.
func (s Security) GossipKeyring() ([][]byte, error) {
	if s.Insecure {
		return nil, nil
	}
	return pki.ReadGossipKeyring(s.GossipKeyFile)
}

// EtcdClientTLS is the TLS of an etcd client dialling endpoints with src;
// nil when src is nil. The server name to check is the endpoints' host
// when they share one, which covers an IP address (a handshake to an IP
// carries no server name to check against); several DNS names are each
// checked against the name dialled.
func EtcdClientTLS(src *Source, endpoints []string) (*tls.Config, error) {
	if src == nil {
		for _, e := range endpoints {
			if strings.HasPrefix(e, "https://") {
				return nil, fmt.Errorf("mtls: etcd endpoint %s is https but no certificate is set; set --tls-cert, --tls-key, --tls-ca or --etcd-cert, --etcd-key, --etcd-ca", e)
			}
		}
		return nil, nil
	}
	hosts := map[string]bool{}
	for _, e := range endpoints {
		u, err := url.Parse(e)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("mtls: etcd endpoint %q: want a URL such as https://etcd:2379", e)
		}
		hosts[u.Hostname()] = true
	}
	var serverName string
	if len(hosts) == 1 {
		for h := range hosts {
			serverName = h
		}
	}
	return ClientTLS(src, serverName), nil
}

// DialCreds are the gRPC transport credentials for dialling addr
// (host:port) with src: TLS checking that the server's certificate names
// the host, or plaintext when src is nil.
func DialCreds(src *Source, addr string) credentials.TransportCredentials {
	if src == nil {
		return insecure.NewCredentials()
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	return credentials.NewTLS(ClientTLS(src, host))
}
