package pki

import (
	"crypto/x509"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func newTestCA(t *testing.T) *CA {
	t.Helper()
	ca, err := NewCA("test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func pool(cas ...*CA) *x509.CertPool {
	p := x509.NewCertPool()
	for _, ca := range cas {
		p.AddCert(ca.Cert)
	}
	return p
}

func TestIssue(t *testing.T) {
	ca := newTestCA(t)
	for _, tc := range []struct {
		role      Role
		hosts     []string
		wantDNS   []string
		wantIPs   []string
		wantUsage []x509.ExtKeyUsage
	}{
		{RoleRouter, []string{"localhost", "127.0.0.1", "::1", "router.moegrid.svc"}, []string{"localhost", "router.moegrid.svc"}, []string{"127.0.0.1", "::1"},
			[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}},
		{RoleExpertNode, []string{"10.0.0.7"}, nil, []string{"10.0.0.7"}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}},
		{RoleCoordinator, nil, nil, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}},
		{RoleEtcd, []string{"etcd-0.etcd", "*.etcd.moegrid.svc"}, []string{"etcd-0.etcd", "*.etcd.moegrid.svc"}, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}},
		{RoleAdmin, nil, nil, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		{RoleClient, nil, nil, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
	} {
		t.Run(string(tc.role), func(t *testing.T) {
			id := Identity{Role: tc.role, Name: string(tc.role) + "-0"}
			before := time.Now()
			kp, err := ca.Issue(LeafRequest{Identity: id, Hosts: tc.hosts, Validity: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			c := kp.Cert
			if c.IsCA {
				t.Error("leaf is a CA")
			}
			if c.NotBefore.After(before) || c.NotAfter.Before(before.Add(time.Hour-time.Minute)) || c.NotAfter.After(time.Now().Add(time.Hour)) {
				t.Errorf("validity %v..%v, want now..now+1h", c.NotBefore, c.NotAfter)
			}
			if diff := cmp.Diff(tc.wantDNS, c.DNSNames); diff != "" {
				t.Errorf("DNS names (-want +got):\n%s", diff)
			}
			var ips []string
			for _, ip := range c.IPAddresses {
				ips = append(ips, ip.String())
			}
			if diff := cmp.Diff(tc.wantIPs, ips); diff != "" {
				t.Errorf("IPs (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantUsage, c.ExtKeyUsage); diff != "" {
				t.Errorf("ext key usage (-want +got):\n%s", diff)
			}
			got, err := IdentityOf(c)
			if err != nil || got != id {
				t.Errorf("IdentityOf = %v, %v; want %v", got, err, id)
			}
			if c.Subject.CommonName != id.Name {
				t.Errorf("CN %q, want %q", c.Subject.CommonName, id.Name)
			}
			for _, usage := range tc.wantUsage {
				if _, err := c.Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
					t.Errorf("verify for %v: %v", usage, err)
				}
			}
			if !tc.role.Serves() {
				if _, err := c.Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
					t.Error("client-only certificate verifies for server auth")
				}
			}
			for _, h := range tc.hosts {
				h = strings.Replace(h, "*", "etcd-1", 1)
				if err := c.VerifyHostname(h); err != nil {
					t.Errorf("VerifyHostname(%s): %v", h, err)
				}
			}
			if err := c.VerifyHostname("elsewhere.example"); err == nil {
				t.Error("leaf verifies for a host it was not issued for")
			}
		})
	}
}

func TestVerifyOtherCAFails(t *testing.T) {
	a, b := newTestCA(t), newTestCA(t)
	kp, err := a.Issue(LeafRequest{Identity: Identity{RoleRouter, "router-0"}, Hosts: []string{"localhost"}, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kp.Cert.Verify(x509.VerifyOptions{Roots: pool(b)}); !errors.As(err, new(x509.UnknownAuthorityError)) {
		t.Errorf("verify against another CA: %v, want UnknownAuthorityError", err)
	}
	if _, err := kp.Cert.Verify(x509.VerifyOptions{Roots: pool(b, a)}); err != nil {
		t.Errorf("verify against a bundle holding its CA: %v", err)
	}
}

func TestIssueErrors(t *testing.T) {
	ca := newTestCA(t)
	for _, tc := range []struct {
		name string
		req  LeafRequest
		err  string
	}{
		{"unknown role", LeafRequest{Identity: Identity{"janitor", "x"}, Validity: time.Hour}, `unknown role "janitor"`},
		{"bad name", LeafRequest{Identity: Identity{RoleRouter, "Router_0"}, Validity: time.Hour}, `name "Router_0"`},
		{"empty name", LeafRequest{Identity: Identity{RoleRouter, ""}, Validity: time.Hour}, `name ""`},
		{"no validity", LeafRequest{Identity: Identity{RoleRouter, "r"}}, "validity 0s"},
		{"outlasts CA", LeafRequest{Identity: Identity{RoleRouter, "r"}, Validity: 48 * time.Hour}, "would outlast the CA"},
		{"bad host", LeafRequest{Identity: Identity{RoleRouter, "r"}, Hosts: []string{"a b"}, Validity: time.Hour}, `host "a b"`},
		{"wildcard inside", LeafRequest{Identity: Identity{RoleRouter, "r"}, Hosts: []string{"a.*.svc"}, Validity: time.Hour}, `host "a.*.svc"`},
		{"client with hosts", LeafRequest{Identity: Identity{RoleClient, "c"}, Hosts: []string{"localhost"}, Validity: time.Hour}, "only dials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ca.Issue(tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("err = %v, want it to contain %q", err, tc.err)
			}
		})
	}
}

func TestParseIdentity(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Identity
		err  bool
	}{
		{in: "spiffe://moegrid/router/router-0", want: Identity{RoleRouter, "router-0"}},
		{in: "spiffe://moegrid/etcd/etcd-1.etcd", want: Identity{RoleEtcd, "etcd-1.etcd"}},
		{in: "spiffe://other/router/router-0", err: true},
		{in: "https://moegrid/router/router-0", err: true},
		{in: "spiffe://moegrid/router", err: true},
		{in: "spiffe://moegrid/router/a/b", err: true},
		{in: "spiffe://moegrid/janitor/x", err: true},
		{in: "spiffe://moegrid/router/x?admin=1", err: true},
		{in: "spiffe://u@moegrid/router/x", err: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseIdentity(tc.in)
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("ParseIdentity = %v, %v; want %v, error %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func FuzzParseIdentity(f *testing.F) {
	f.Add("spiffe://moegrid/router/router-0")
	f.Add("spiffe://moegrid/admin/a.b")
	f.Add("spiffe://moegrid//")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseIdentity(s)
		if err != nil {
			return
		}
		if err := id.Validate(); err != nil {
			t.Fatalf("ParseIdentity(%q) = %v, which does not validate: %v", s, id, err)
		}
		again, err := ParseIdentity(id.String())
		if err != nil || again != id {
			t.Fatalf("round trip of %q: %v, %v", s, again, err)
		}
	})
}

func TestIdentityOfForeignCert(t *testing.T) {
	ca := newTestCA(t)
	if _, err := IdentityOf(ca.Cert); !errors.Is(err, ErrNoIdentity) {
		t.Errorf("IdentityOf(CA) = %v, want ErrNoIdentity", err)
	}
}

func TestDir(t *testing.T) {
	d := Dir(filepath.Join(t.TempDir(), "certs"))
	if _, err := d.LoadCA(); !errors.Is(err, ErrNoCA) {
		t.Fatalf("LoadCA of an empty directory: %v, want ErrNoCA", err)
	}
	ca, err := d.Init(24 * time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Init(24 * time.Hour); !errors.Is(err, ErrCAExists) {
		t.Errorf("second Init: %v, want ErrCAExists", err)
	}
	loaded, err := d.LoadCA()
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Cert.Equal(ca.Cert) || !publicKeysEqual(loaded.Key.Public(), ca.Key.Public()) {
		t.Error("LoadCA returned another CA than Init made")
	}
	kp, err := loaded.Issue(LeafRequest{Identity: Identity{RoleRouter, "router-0"}, Hosts: []string{"localhost"}, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WriteKeyPair("router-0", kp); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		path string
		perm os.FileMode
	}{
		{string(d), 0o700 | os.ModeDir},
		{d.CACert(), 0o644},
		{d.CAKey(), 0o600},
		{d.GossipKey(), 0o600},
		{d.Cert("router-0"), 0o644},
		{d.Key("router-0"), 0o600},
	} {
		fi, err := os.Stat(f.path)
		if err != nil {
			t.Error(err)
			continue
		}
		if fi.Mode() != f.perm {
			t.Errorf("%s: mode %v, want %v", f.path, fi.Mode(), f.perm)
		}
	}
	entries, err := os.ReadDir(string(d))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"ca.crt", "ca.key", "gossip.key", "router-0.crt", "router-0.key"}; !slices.Equal(names, want) {
		t.Errorf("directory holds %v, want %v (no temporary files left)", names, want)
	}
	certPEM, err := os.ReadFile(d.Cert("router-0"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool(ca), DNSName: "localhost"}); err != nil {
		t.Errorf("written leaf does not verify against the written CA: %v", err)
	}
	k, err := ReadGossipKey(d.GossipKey())
	if err != nil || len(k) != GossipKeySize {
		t.Errorf("ReadGossipKey = %d bytes, %v", len(k), err)
	}
}

func TestLoadCAMismatchedKey(t *testing.T) {
	a := Dir(t.TempDir())
	b := Dir(t.TempDir())
	if _, err := a.Init(time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Init(time.Hour); err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(b.CAKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a.CAKey(), key, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.LoadCA(); err == nil || !strings.Contains(err.Error(), "does not belong to") {
		t.Errorf("LoadCA with another CA's key: %v", err)
	}
}

func TestReadGossipKeyErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ name, content, err string }{
		{"short", base64.StdEncoding.EncodeToString(make([]byte, 16)), "16 bytes, want 32"},
		{"not base64", "!!!", "not base64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name)
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := ReadGossipKey(p); err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("err = %v, want %q", err, tc.err)
			}
		})
	}
	if _, err := ReadGossipKey(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file read without error")
	}
}

func TestReadGossipKeyring(t *testing.T) {
	dir := t.TempDir()
	k1, k2 := strings.Repeat("A", 43)+"=", strings.Repeat("B", 43)+"="
	for _, tc := range []struct {
		name, content string
		keys          int
		err           string
	}{
		{"one key", k1 + "\n", 1, ""},
		{"two keys, blank lines", "\n" + k1 + "\n\n  " + k2 + "  \n", 2, ""},
		{"empty", "\n \n", 0, "holds no key"},
		{"bad second line", k1 + "\nnot-base64!\n", 0, "line 2: not base64"},
		{"short key", "AAAA\n", 0, "line 1: 3 bytes, want 32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			keys, err := ReadGossipKeyring(p)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("ReadGossipKeyring: %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || len(keys) != tc.keys {
				t.Errorf("ReadGossipKeyring = %d keys, %v; want %d", len(keys), err, tc.keys)
			}
		})
	}
}
