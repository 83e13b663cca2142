// Package pki makes the certificates a moegrid cluster runs on: one cluster
// CA (ECDSA P-256, which etcd, gRPC and every TLS stack accept) and a leaf
// certificate per component, whose identity is a URI SAN
// spiffe://moegrid/<role>/<name>. Servers authorize callers by that role
// (package mtls), so the role is the only thing a certificate grants.
//
// A certificate directory has a fixed layout (see Dir): ca.crt, ca.key,
// <name>.crt, <name>.key and gossip.key, keys readable by the owner only, every
// file replaced atomically so that a process reloading it never sees half a
// file.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// TrustDomain is the host part of every moegrid identity URI.
const TrustDomain = "moegrid"

// clockSkew backdates NotBefore so that a certificate is valid at once on
// machines whose clocks run a little behind the issuer's.
const clockSkew = 5 * time.Minute

// Role is what a certificate's holder is in the cluster; servers authorize
// calls by it.
type Role string

// The roles of a moegrid cluster.
const (
	RoleRouter      Role = "router"      // serves clients, calls expert nodes
	RoleExpertNode  Role = "expertnode"  // serves Forward to routers
	RoleCoordinator Role = "coordinator" // writes the placement, serves status
	RoleEtcd        Role = "etcd"        // etcd server and peer
	RoleAdmin       Role = "admin"       // operators and the CLI (drain, status)
	RoleClient      Role = "client"      // generation clients of the router
)

// Roles lists every role, in the order `moegrid certs all` issues them.
func Roles() []Role {
	return []Role{RoleRouter, RoleExpertNode, RoleCoordinator, RoleEtcd, RoleAdmin, RoleClient}
}

// ErrUnknownRole is returned for a role name that is none of Roles.
var ErrUnknownRole = errors.New("pki: unknown role")

// ParseRole returns the role named s.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles() {
		if string(r) == s {
			return r, nil
		}
	}
	return "", fmt.Errorf("%w %q (want one of %s)", ErrUnknownRole, s, roleList())
}

func roleList() string {
	var names []string
	for _, r := range Roles() {
		names = append(names, string(r))
	}
	return strings.Join(names, ", ")
}

// Serves reports whether the role's holder accepts connections, so that its
// certificate must carry host names and server authentication. Every role
// but admin and client does; those only dial.
func (r Role) Serves() bool {
	return r != RoleAdmin && r != RoleClient
}

// extKeyUsage is what a leaf of the role may be used for. Serving roles are
// also clients (a router dials expert nodes, everyone dials etcd, etcd
// members dial their peers), so they get both.
func (r Role) extKeyUsage() []x509.ExtKeyUsage {
	if r.Serves() {
		return []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	return []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
}

// Identity is who a certificate names: its role and the holder's name
// (router-0, expert-3, ...).
type Identity struct {
	Role Role
	Name string
}

// URI is the identity as the certificate's URI SAN carries it.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: TrustDomain, Path: "/" + string(id.Role) + "/" + id.Name}
}

func (id Identity) String() string { return id.URI().String() }

// namePattern is a lower-case DNS name: labels of letters, digits and
// inner hyphens, joined by dots.
var namePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

// Validate reports what is wrong with the identity, if anything.
func (id Identity) Validate() error {
	if _, err := ParseRole(string(id.Role)); err != nil {
		return err
	}
	return ValidateName(id.Name)
}

// ValidateName reports whether name can be a holder's name: a lower-case
// DNS name like router-0 or expert-3.moegrid, so that it is safe in a URI
// path, a file name and a Kubernetes object name.
func ValidateName(name string) error {
	if len(name) > 253 || !namePattern.MatchString(name) {
		return fmt.Errorf("pki: name %q: want lower-case letters, digits, '-' and '.', like router-0", name)
	}
	return nil
}

// ErrNoIdentity is returned for a certificate that carries no moegrid
// identity URI.
var ErrNoIdentity = errors.New("pki: certificate has no moegrid identity")

// IdentityOf returns the identity a certificate's URI SAN names. The caller
// must have verified the certificate; this only reads it. A certificate with
// no spiffe://moegrid/ URI, or more than one, has no identity.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	var found []*url.URL
	for _, u := range cert.URIs {
		if u.Scheme == "spiffe" && u.Host == TrustDomain {
			found = append(found, u)
		}
	}
	switch len(found) {
	case 0:
		return Identity{}, fmt.Errorf("%w (subject %q)", ErrNoIdentity, cert.Subject.CommonName)
	case 1:
	default:
		return Identity{}, fmt.Errorf("%w: %d identity URIs, want one", ErrNoIdentity, len(found))
	}
	return ParseIdentity(found[0].String())
}

// ParseIdentity parses an identity URI, spiffe://moegrid/<role>/<name>.
func ParseIdentity(s string) (Identity, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Identity{}, fmt.Errorf("pki: identity %q: %w", s, err)
	}
	if u.Scheme != "spiffe" || u.Host != TrustDomain || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return Identity{}, fmt.Errorf("pki: identity %q: want spiffe://%s/<role>/<name>", s, TrustDomain)
	}
	role, name, ok := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
	if !ok {
		return Identity{}, fmt.Errorf("pki: identity %q: want spiffe://%s/<role>/<name>", s, TrustDomain)
	}
	id := Identity{Role: Role(role), Name: name}
	if err := id.Validate(); err != nil {
		return Identity{}, fmt.Errorf("pki: identity %q: %w", s, err)
	}
	return id, nil
}

// CA is a certificate authority: its certificate and the key that signs.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA makes a self-signed CA valid for the given duration from now.
func NewCA(commonName string, validity time.Duration) (*CA, error) {
	if validity <= 0 {
		return nil, fmt.Errorf("pki: CA validity %v: want a positive duration", validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"moegrid"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// Leaves are signed by the CA itself; no intermediate may be made.
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: sign CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse CA: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LeafRequest says what leaf certificate to issue.
type LeafRequest struct {
	Identity Identity
	// Hosts are the DNS names and IP addresses the holder serves under
	// (localhost, 127.0.0.1, router.moegrid.svc, *.expert.moegrid.svc).
	// Only serving roles may have them.
	Hosts []string
	// Validity is how long the leaf is valid from now; it may not outlast
	// the CA.
	Validity time.Duration
}

// KeyPair is an issued leaf: the parsed certificate and both halves in PEM.
type KeyPair struct {
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte
}

// Issue makes a leaf certificate for req, signed by the CA.
func (ca *CA) Issue(req LeafRequest) (*KeyPair, error) {
	id := req.Identity
	if err := id.Validate(); err != nil {
		return nil, err
	}
	if req.Validity <= 0 {
		return nil, fmt.Errorf("pki: %s: validity %v: want a positive duration", id, req.Validity)
	}
	now := time.Now()
	notAfter := now.Add(req.Validity)
	if notAfter.After(ca.Cert.NotAfter) {
		return nil, fmt.Errorf("pki: %s: validity %v would outlast the CA, which expires %s",
			id, req.Validity, ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if len(req.Hosts) > 0 && !id.Role.Serves() {
		return nil, fmt.Errorf("pki: %s: role %s only dials, so its certificate carries no hosts", id, id.Role)
	}
	var (
		dnsNames []string
		ips      []net.IP
	)
	for _, h := range req.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
			continue
		}
		// A wildcard covers the pods of a headless service,
		// *.expert.moegrid.svc.cluster.local.
		if !namePattern.MatchString(strings.TrimPrefix(h, "*.")) {
			return nil, fmt.Errorf("pki: %s: host %q is neither an IP address nor a DNS name", id, h)
		}
		dnsNames = append(dnsNames, h)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: key: %w", id, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// etcd maps a client certificate's CommonName to its user, and
		// people read it in logs, so it is the holder's name.
		Subject:               pkix.Name{CommonName: id.Name, Organization: []string{"moegrid"}, OrganizationalUnit: []string{string(id.Role)}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           id.Role.extKeyUsage(),
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{id.URI()},
		DNSNames:              dnsNames,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: sign: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: parse: %w", id, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return &KeyPair{Cert: cert, CertPEM: encodeCert(cert), KeyPEM: keyPEM}, nil
}

// newSerial returns a random 128-bit serial number, as RFC 5280 and the CA
// Browser Forum ask (unpredictable, positive, at most 20 bytes).
func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("pki: serial: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

func encodeCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func encodeKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("pki: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
