package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/moegrid/moegrid/internal/pki"
)

// runSecrets runs `moegrid certs secrets` and decodes its standard output
// strictly as Kubernetes Secrets.
func runSecrets(t *testing.T, args ...string) (map[string]*corev1.Secret, string) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"certs", "secrets"}, args...))
	if err := root.ExecuteContext(t.Context()); err != nil {
		t.Fatalf("certs secrets %v: %v\n%s", args, err, errOut.String())
	}
	secrets := map[string]*corev1.Secret{}
	for _, doc := range strings.Split(out.String(), "\n---\n") {
		s := &corev1.Secret{}
		if err := yaml.UnmarshalStrict([]byte(doc), s); err != nil {
			t.Fatalf("decoding\n%s\n: %v", doc, err)
		}
		if s.APIVersion != "v1" || s.Kind != "Secret" {
			t.Errorf("%s: %s/%s, want v1/Secret", s.Name, s.APIVersion, s.Kind)
		}
		if _, dup := secrets[s.Name]; dup {
			t.Errorf("Secret %s printed twice", s.Name)
		}
		secrets[s.Name] = s
	}
	return secrets, errOut.String()
}

func TestCertsSecrets(t *testing.T) {
	d := pki.Dir(filepath.Join(t.TempDir(), "certs"))
	secrets, stderr := runSecrets(t, "--dir", string(d), "--namespace", "prod")
	if !strings.Contains(stderr, "ca  moegrid cluster CA") {
		t.Errorf("a new CA is not reported on stderr: %q", stderr)
	}
	roots := caPool(t, d)
	caPEM, err := os.ReadFile(d.CACert())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		secret   string
		identity string
		hosts    []string // names the certificate must serve, the first as its server name
		notHosts []string
	}{
		{"moegrid-router-tls", "spiffe://moegrid/router/moegrid-router",
			[]string{"moegrid-router.prod.svc", "moegrid-router", "moegrid-router.prod", "moegrid-router.prod.svc.cluster.local", "localhost", "127.0.0.1"},
			[]string{"moegrid-router.moegrid.svc", "x.moegrid-router"}},
		{"moegrid-expertnode-tls", "spiffe://moegrid/expertnode/expert",
			[]string{"expert-3.expert.prod.svc", "expert-0.expert", "expert-7.expert.prod.svc.cluster.local", "127.0.0.1"},
			[]string{"expert-3.expert.moegrid.svc", "a.b.expert"}},
		{"moegrid-coordinator-tls", "spiffe://moegrid/coordinator/moegrid-coordinator",
			[]string{"moegrid-coordinator.prod.svc", "moegrid-coordinator", "localhost"},
			[]string{"moegrid-router.prod.svc"}},
		{"moegrid-etcd-tls", "spiffe://moegrid/etcd/moegrid-etcd",
			[]string{"moegrid-etcd-0.moegrid-etcd", "moegrid-etcd-2.moegrid-etcd.prod.svc", "moegrid-etcd.prod.svc.cluster.local"},
			[]string{"moegrid-etcd-0.moegrid-etcd.moegrid.svc"}},
		{"moegrid-admin-tls", "spiffe://moegrid/admin/admin", nil, nil},
	} {
		t.Run(tc.secret, func(t *testing.T) {
			s := secrets[tc.secret]
			if s == nil {
				t.Fatalf("no Secret %s", tc.secret)
			}
			if s.Namespace != "prod" || s.Type != corev1.SecretTypeTLS {
				t.Errorf("namespace %q type %q, want prod and %s", s.Namespace, s.Type, corev1.SecretTypeTLS)
			}
			if diff := cmp.Diff([]string{"ca.crt", "tls.crt", "tls.key"}, sortedDataKeys(s)); diff != "" {
				t.Errorf("keys (-want +got):\n%s", diff)
			}
			if !bytes.Equal(s.Data["ca.crt"], caPEM) {
				t.Error("ca.crt is not the directory's CA")
			}
			pair, err := tls.X509KeyPair(s.Data["tls.crt"], s.Data["tls.key"])
			if err != nil {
				t.Fatalf("tls.crt and tls.key: %v", err)
			}
			leaf := pair.Leaf
			id, err := pki.IdentityOf(leaf)
			if err != nil || id.String() != tc.identity {
				t.Errorf("identity %v (%v), want %s", id, err, tc.identity)
			}
			if leaf.Subject.CommonName != id.Name {
				t.Errorf("common name %q, want %q (etcd's --peer-cert-allowed-cn reads it)", leaf.Subject.CommonName, id.Name)
			}
			usage := x509.ExtKeyUsageClientAuth
			if len(tc.hosts) > 0 {
				usage = x509.ExtKeyUsageServerAuth
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
				t.Errorf("does not chain to the CA for %v: %v", usage, err)
			}
			for _, h := range tc.hosts {
				if err := leaf.VerifyHostname(h); err != nil {
					t.Errorf("does not serve %s: %v", h, err)
				}
			}
			for _, h := range tc.notHosts {
				if err := leaf.VerifyHostname(h); err == nil {
					t.Errorf("serves %s, which is not its", h)
				}
			}
			if len(tc.hosts) == 0 && len(leaf.DNSNames)+len(leaf.IPAddresses) > 0 {
				t.Errorf("a dialling role carries hosts %v %v", leaf.DNSNames, leaf.IPAddresses)
			}
		})
	}
	g := secrets["moegrid-gossip"]
	if g == nil {
		t.Fatal("no Secret moegrid-gossip")
	}
	want, err := os.ReadFile(d.GossipKey())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g.Data["gossip.key"], want) || len(g.Data) != 1 || g.Type != corev1.SecretTypeOpaque {
		t.Errorf("moegrid-gossip: type %s, %d keys; gossip.key equal to the file: %v", g.Type, len(g.Data), bytes.Equal(g.Data["gossip.key"], want))
	}
	if len(secrets) != 6 {
		t.Errorf("%d Secrets, want 6", len(secrets))
	}

	// Again: the same CA and gossip key, fresh certificates, nothing on
	// stderr about a new CA.
	again, stderr := runSecrets(t, "--dir", string(d), "--namespace", "prod")
	if stderr != "" {
		t.Errorf("second run wrote %q", stderr)
	}
	if !bytes.Equal(again["moegrid-router-tls"].Data["ca.crt"], caPEM) {
		t.Error("second run changed the CA")
	}
	if bytes.Equal(again["moegrid-router-tls"].Data["tls.crt"], secrets["moegrid-router-tls"].Data["tls.crt"]) {
		t.Error("second run did not issue a new certificate")
	}

	// A keyring in rotation (two keys) goes into the Secret whole.
	k2, err := pki.NewGossipKey()
	if err != nil {
		t.Fatal(err)
	}
	ring := append(append([]byte{}, want...), []byte(encodeKeyLine(k2))...)
	if err := os.WriteFile(d.GossipKey(), ring, 0o600); err != nil {
		t.Fatal(err)
	}
	rotated, _ := runSecrets(t, "--dir", string(d))
	if !bytes.Equal(rotated["moegrid-gossip"].Data["gossip.key"], ring) {
		t.Errorf("a two-key keyring came out as %q", rotated["moegrid-gossip"].Data["gossip.key"])
	}
	if rotated["moegrid-router-tls"].Namespace != "moegrid" {
		t.Errorf("default namespace %q, want moegrid", rotated["moegrid-router-tls"].Namespace)
	}
}

func TestCertsSecretsErrors(t *testing.T) {
	badGossip := t.TempDir()
	if _, err := runCmd(t, "certs", "init", "--dir", badGossip); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pki.Dir(badGossip).GossipKey(), []byte("c2hvcnQ=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		err  string
	}{
		{"no dir", []string{"certs", "secrets"}, "--dir is required"},
		{"bad namespace", []string{"certs", "secrets", "--dir", empty, "--namespace", "Prod_1"}, `--namespace "Prod_1"`},
		{"bad domain", []string{"certs", "secrets", "--dir", empty, "--cluster-domain", "cluster..local"}, `--cluster-domain "cluster..local"`},
		{"bad days", []string{"certs", "secrets", "--dir", empty, "--days", "0"}, "--days 0"},
		{"bad gossip key", []string{"certs", "secrets", "--dir", badGossip}, "line 1: want base64 of 32 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCmd(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("err = %v, want it to contain %q\n%s", err, tc.err, out)
			}
		})
	}
	if entries, _ := os.ReadDir(empty); len(entries) != 0 {
		t.Errorf("failed commands left files in an empty directory: %v", entries)
	}
}

func sortedDataKeys(s *corev1.Secret) []string {
	var keys []string
	for k := range s.Data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func encodeKeyLine(k []byte) string { return base64.StdEncoding.EncodeToString(k) + "\n" }
