package main

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/moegrid/moegrid/internal/pki"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pki.ParseCertPEM(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

func caPool(t *testing.T, d pki.Dir) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	p.AddCert(readCert(t, d.CACert()))
	return p
}

func TestCertsAll(t *testing.T) {
	d := pki.Dir(filepath.Join(t.TempDir(), "certs"))
	out, err := runCmd(t, "certs", "all", "--dir", string(d), "--hosts", "localhost,127.0.0.1,router.moegrid.svc")
	if err != nil {
		t.Fatalf("certs all: %v\n%s", err, out)
	}
	roots := caPool(t, d)
	for _, role := range pki.Roles() {
		name := string(role)
		if !strings.Contains(out, "spiffe://moegrid/"+name+"/"+name) {
			t.Errorf("output does not name the %s certificate:\n%s", name, out)
		}
		c := readCert(t, d.Cert(name))
		id, err := pki.IdentityOf(c)
		if err != nil || id != (pki.Identity{Role: role, Name: name}) {
			t.Errorf("%s: identity %v, %v", name, id, err)
		}
		usage := x509.ExtKeyUsageClientAuth
		var hosts []string
		if role.Serves() {
			usage = x509.ExtKeyUsageServerAuth
			hosts = []string{"localhost", "router.moegrid.svc"}
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if diff := cmp.Diff(hosts, c.DNSNames); diff != "" {
			t.Errorf("%s DNS names (-want +got):\n%s", name, diff)
		}
		if fi, err := os.Stat(d.Key(name)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s key: %v, %v; want mode 0600", name, fi.Mode(), err)
		}
	}
	if _, err := pki.ReadGossipKey(d.GossipKey()); err != nil {
		t.Error(err)
	}

	// A second run keeps the CA and reissues the leaves.
	caBefore := readCert(t, d.CACert())
	routerBefore := readCert(t, d.Cert("router"))
	if out, err := runCmd(t, "certs", "all", "--dir", string(d)); err != nil {
		t.Fatalf("second certs all: %v\n%s", err, out)
	}
	if !readCert(t, d.CACert()).Equal(caBefore) {
		t.Error("second certs all replaced the CA")
	}
	if routerAfter := readCert(t, d.Cert("router")); routerAfter.Equal(routerBefore) {
		t.Error("second certs all did not reissue the router certificate")
	} else if !slices.Equal(routerAfter.DNSNames, []string{"localhost"}) {
		t.Errorf("reissued router DNS names %v, want the default [localhost]", routerAfter.DNSNames)
	}
}

func TestCertsInitIssue(t *testing.T) {
	d := pki.Dir(t.TempDir())
	if out, err := runCmd(t, "certs", "init", "--dir", string(d), "--ca-days", "30"); err != nil || !strings.Contains(out, "gossip") {
		t.Fatalf("certs init: %v\n%s", err, out)
	}
	out, err := runCmd(t, "certs", "issue", "--dir", string(d), "--role", "expertnode", "--name", "expert-3",
		"--hosts", "expert-3.moegrid.svc,10.0.0.13", "--days", "7")
	if err != nil {
		t.Fatalf("certs issue: %v\n%s", err, out)
	}
	c := readCert(t, d.Cert("expert-3"))
	if err := c.VerifyHostname("10.0.0.13"); err != nil {
		t.Error(err)
	}
	if err := c.VerifyHostname("expert-3.moegrid.svc"); err != nil {
		t.Error(err)
	}
	if days := c.NotAfter.Sub(c.NotBefore).Hours() / 24; days < 7 || days > 7.01 {
		t.Errorf("valid for %.2f days, want 7", days)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: caPool(t, d)}); err != nil {
		t.Error(err)
	}
	if out, err := runCmd(t, "certs", "issue", "--dir", string(d), "--role", "client", "--days", "7"); err != nil {
		t.Fatalf("certs issue client: %v\n%s", err, out)
	}
	if c := readCert(t, d.Cert("client")); len(c.DNSNames)+len(c.IPAddresses) != 0 {
		t.Errorf("client certificate carries hosts %v %v", c.DNSNames, c.IPAddresses)
	}
}

func TestCertsErrors(t *testing.T) {
	initialised := t.TempDir()
	if _, err := runCmd(t, "certs", "init", "--dir", initialised, "--ca-days", "30"); err != nil {
		t.Fatal(err)
	}
	empty := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		err  string
	}{
		{"no dir", []string{"certs", "init"}, "--dir is required"},
		{"CA exists", []string{"certs", "init", "--dir", initialised}, "already has a CA"},
		{"missing CA", []string{"certs", "issue", "--dir", empty, "--role", "router"}, "no CA in directory (run `moegrid certs init` first)"},
		{"no role", []string{"certs", "issue", "--dir", initialised}, "--role is required"},
		{"unknown role", []string{"certs", "issue", "--dir", initialised, "--role", "janitor"}, `unknown role "janitor" (want one of router, expertnode`},
		{"bad name", []string{"certs", "issue", "--dir", initialised, "--role", "router", "--name", "../x"}, `name "../x"`},
		{"client with hosts", []string{"certs", "issue", "--dir", initialised, "--role", "admin", "--hosts", "localhost", "--days", "7"}, "only dials"},
		{"bad host", []string{"certs", "issue", "--dir", initialised, "--role", "router", "--hosts", "a b", "--days", "7"}, `host "a b"`},
		{"outlasts CA", []string{"certs", "issue", "--dir", initialised, "--role", "router", "--days", "365"}, "would outlast the CA"},
		{"bad days", []string{"certs", "issue", "--dir", initialised, "--role", "router", "--days", "0"}, "--days 0"},
		{"bad CA days", []string{"certs", "all", "--dir", empty, "--ca-days", "-1"}, "--ca-days -1"},
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
