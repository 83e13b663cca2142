package k8stest

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/url"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// The Secrets of the TLS contract (deploy/README.md, "Certificates").
const (
	gossipSecret  = "moegrid-gossip"
	apiKeysSecret = "moegrid-api-keys"
)

// tlsSecret is the certificate Secret a moegrid role mounts.
func tlsSecret(role string) string { return "moegrid-" + role + "-tls" }

// secretFile resolves a path inside a container to the Secret and key it
// comes from, through the container's mounts and the pod's volumes.
func secretFile(t *testing.T, spec *corev1.PodSpec, c *corev1.Container, path string) (secret, key string, vol *corev1.Volume) {
	t.Helper()
	for _, m := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !ok || rel == "" {
			continue
		}
		if !m.ReadOnly {
			t.Errorf("container %s: %s is mounted writable", c.Name, m.MountPath)
		}
		for i := range spec.Volumes {
			v := &spec.Volumes[i]
			if v.Name != m.Name {
				continue
			}
			if v.Secret == nil {
				t.Errorf("container %s: %s is on volume %s, which is no Secret", c.Name, path, v.Name)
				return "", "", nil
			}
			key = rel
			if len(v.Secret.Items) > 0 {
				key = ""
				for _, it := range v.Secret.Items {
					if it.Path == rel {
						key = it.Key
					}
				}
				if key == "" {
					t.Errorf("container %s: Secret volume %s projects no %s", c.Name, v.Name, rel)
				}
			}
			return v.Secret.SecretName, key, v
		}
		t.Errorf("container %s: mount %s names no volume", c.Name, m.Name)
		return "", "", nil
	}
	t.Errorf("container %s: %s is on no mounted volume", c.Name, path)
	return "", "", nil
}

// checkSecretVolume checks that a Secret's files are readable by the pod's
// user and nobody else: mode 0440 with the pod's fsGroup as group.
func checkSecretVolume(t *testing.T, who string, spec *corev1.PodSpec, v *corev1.Volume) {
	t.Helper()
	if v == nil {
		return
	}
	if mode := deref(v.Secret.DefaultMode, 0o644); mode != 0o440 {
		t.Errorf("%s: Secret volume %s has mode %#o, want 0440 (keys readable by the pod's group only)", who, v.Name, mode)
	}
	psc := spec.SecurityContext
	if psc == nil || psc.FSGroup == nil || psc.RunAsGroup == nil || *psc.FSGroup != *psc.RunAsGroup {
		t.Errorf("%s: the pod's fsGroup is not its runAsGroup: the 0440 Secret files would be unreadable", who)
	}
}

// TestTLSMounts checks that every moegrid server runs on mutual TLS with
// the contract's Secrets: its certificate, key and CA from
// moegrid-<role>-tls (tls.crt, tls.key, ca.crt), the gossip keyring from
// moegrid-gossip, the router's API keys from the optional moegrid-api-keys;
// etcd over https; and never --insecure.
func TestTLSMounts(t *testing.T) {
	forEachTarget(t, func(t *testing.T, o *objects) {
		seen := 0
		for _, w := range o.workloads() {
			spec := &w.template.Spec
			for i := range spec.Containers {
				c := &spec.Containers[i]
				if !isMoegrid(c.Image) {
					continue
				}
				mc := parseMoegrid(t, o, c)
				role := mc.path[0]
				who := w.kind + "/" + w.name
				seen++
				if v, ok := mc.flags["insecure"]; ok && v != "false" {
					t.Errorf("%s: --insecure=%s", who, v)
				}
				for flag, key := range map[string]string{"tls-cert": "tls.crt", "tls-key": "tls.key", "tls-ca": "ca.crt"} {
					path, ok := mc.flags[flag]
					if !ok {
						t.Errorf("%s: no --%s", who, flag)
						continue
					}
					secret, k, v := secretFile(t, spec, c, path)
					if secret != tlsSecret(role) || k != key {
						t.Errorf("%s: --%s=%s is key %q of Secret %q, want %q of %q", who, flag, path, k, secret, key, tlsSecret(role))
					}
					checkSecretVolume(t, who, spec, v)
				}
				if path, ok := mc.flags["gossip-key-file"]; !ok {
					t.Errorf("%s: no --gossip-key-file: gossip would be refused or plaintext", who)
				} else {
					secret, k, v := secretFile(t, spec, c, path)
					if secret != gossipSecret || k != "gossip.key" {
						t.Errorf("%s: --gossip-key-file=%s is key %q of Secret %q, want gossip.key of %s", who, path, k, secret, gossipSecret)
					}
					checkSecretVolume(t, who, spec, v)
				}
				for _, e := range strings.Split(mc.flags["etcd-endpoints"], ",") {
					if u, err := url.Parse(e); err != nil || u.Scheme != "https" {
						t.Errorf("%s: etcd endpoint %q is not https", who, e)
					}
				}
				if role != "router" {
					continue
				}
				path, ok := mc.flags["api-keys"]
				if !ok || path == "" {
					t.Errorf("%s: no --api-keys: every client could generate", who)
					continue
				}
				secret, k, v := secretFile(t, spec, c, path)
				if secret != apiKeysSecret || k != "keys.json" {
					t.Errorf("%s: --api-keys=%s is key %q of Secret %q, want keys.json of %s", who, path, k, secret, apiKeysSecret)
				}
				if v != nil && !deref(v.Secret.Optional, false) {
					t.Errorf("%s: the API keys Secret is not optional: a cluster without keys could not start a router", who)
				}
				checkSecretVolume(t, who, spec, v)
			}
		}
		if seen == 0 {
			t.Error("no moegrid container")
		}
	})
}

// etcdFlags is the etcd container's command line, $(VAR)s expanded.
func etcdFlags(t *testing.T, o *objects) (map[string]string, *corev1.PodSpec, *corev1.Container) {
	t.Helper()
	sts := o.statefulSet("moegrid-etcd")
	if sts == nil {
		t.Fatal("no moegrid-etcd StatefulSet")
	}
	spec := &sts.Spec.Template.Spec
	c := &spec.Containers[0]
	env := podEnv(t, o, c)
	flags := map[string]string{}
	for _, a := range c.Args {
		k, v, hasVal := strings.Cut(strings.TrimPrefix(expand(t, a, env), "--"), "=")
		if !hasVal {
			v = "true"
		}
		flags[k] = v
	}
	return flags, spec, c
}

// TestEtcdTLS checks the bundled etcd: clients and peers on TLS with
// certificates required, the files from moegrid-etcd-tls, and health on a
// plain port of its own for the kubelet.
func TestEtcdTLS(t *testing.T) {
	o := rendered(t, targets[0])
	flags, spec, c := etcdFlags(t, o)
	for _, f := range []string{"listen-client-urls", "advertise-client-urls", "listen-peer-urls", "initial-advertise-peer-urls"} {
		if u, err := url.Parse(flags[f]); err != nil || u.Scheme != "https" {
			t.Errorf("--%s=%s is not https", f, flags[f])
		}
	}
	for _, m := range strings.Split(flags["initial-cluster"], ",") {
		_, peer, _ := strings.Cut(m, "=")
		if !strings.HasPrefix(peer, "https://") {
			t.Errorf("--initial-cluster member %s is not https", m)
		}
	}
	for _, f := range []string{"client-cert-auth", "peer-client-cert-auth"} {
		if flags[f] != "true" {
			t.Errorf("--%s is not set: any client could connect", f)
		}
	}
	if flags["peer-cert-allowed-cn"] == "" {
		t.Error("no --peer-cert-allowed-cn: any certificate of the CA could join as a member")
	}
	for flag, key := range map[string]string{
		"cert-file": "tls.crt", "key-file": "tls.key", "trusted-ca-file": "ca.crt",
		"peer-cert-file": "tls.crt", "peer-key-file": "tls.key", "peer-trusted-ca-file": "ca.crt",
	} {
		secret, k, v := secretFile(t, spec, c, flags[flag])
		if secret != tlsSecret("etcd") || k != key {
			t.Errorf("--%s=%s is key %q of Secret %q, want %q of %s", flag, flags[flag], k, secret, key, tlsSecret("etcd"))
		}
		checkSecretVolume(t, "etcd", spec, v)
	}
	metrics, err := url.Parse(flags["listen-metrics-urls"])
	if err != nil || metrics.Scheme != "http" {
		t.Errorf("--listen-metrics-urls=%s: the kubelet's probes need plain HTTP", flags["listen-metrics-urls"])
	}
	for _, pr := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
		if pr.HTTPGet == nil || pr.HTTPGet.Scheme == corev1.URISchemeHTTPS {
			t.Errorf("etcd probe %+v: want plain HTTP on the metrics port", pr.ProbeHandler)
		}
	}
}

// issuedCerts are the certificates `moegrid certs secrets` issues for
// namespace moegrid, by Secret name, made once per test binary.
var (
	issuedOnce sync.Once
	issued     map[string]*x509.Certificate
	issuedErr  error
)

func certsSecrets(t *testing.T) map[string]*x509.Certificate {
	t.Helper()
	bin := moegridBinary(t)
	issuedOnce.Do(func() {
		dir := filepath.Join(binDirOrTemp(t), "certs")
		cmd := exec.Command(bin, "certs", "secrets", "--dir", dir, "--namespace", "moegrid")
		cmd.Env = cleanEnv()
		out, err := cmd.Output()
		if err != nil {
			issuedErr = err
			return
		}
		issued = map[string]*x509.Certificate{}
		for _, doc := range strings.Split(string(out), "\n---\n") {
			var s corev1.Secret
			if err := yaml.UnmarshalStrict([]byte(doc), &s); err != nil {
				issuedErr = err
				return
			}
			if s.Type != corev1.SecretTypeTLS {
				continue
			}
			pair, err := tls.X509KeyPair(s.Data["tls.crt"], s.Data["tls.key"])
			if err != nil {
				issuedErr = err
				return
			}
			issued[s.Name] = pair.Leaf
		}
	})
	if issuedErr != nil {
		t.Fatalf("moegrid certs secrets: %v", issuedErr)
	}
	return issued
}

// binDirOrTemp is a directory that lives as long as the test binary.
func binDirOrTemp(t *testing.T) string {
	if binDir != "" {
		return binDir
	}
	return t.TempDir()
}

func hostOf(t *testing.T, addr string) string {
	t.Helper()
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		t.Errorf("address %q: %v", addr, err)
	}
	return h
}

// TestCertificatesNameTheAddresses checks that each address one component
// dials another at is a name the other's certificate (as `moegrid certs
// secrets` issues it) serves: the expert nodes' --advertise-addr, which
// routers dial; the etcd endpoints and peer URLs; the server names the
// ServiceMonitors check. A certificate that misses one fails every
// handshake.
func TestCertificatesNameTheAddresses(t *testing.T) {
	certs := certsSecrets(t)
	forEachTarget(t, func(t *testing.T, o *objects) {
		for _, w := range o.workloads() {
			spec := &w.template.Spec
			for i := range spec.Containers {
				c := &spec.Containers[i]
				if !isMoegrid(c.Image) {
					continue
				}
				mc := parseMoegrid(t, o, c)
				if _, ok := certs[tlsSecret(mc.path[0])]; !ok {
					t.Errorf("%s/%s: `moegrid certs secrets` makes no %s", w.kind, w.name, tlsSecret(mc.path[0]))
				}
				if adv, ok := mc.flags["advertise-addr"]; ok {
					if err := certs[tlsSecret(mc.path[0])].VerifyHostname(hostOf(t, adv)); err != nil {
						t.Errorf("%s/%s: --advertise-addr=%s: %v", w.kind, w.name, adv, err)
					}
				}
				if o.statefulSet("moegrid-etcd") == nil {
					continue // an external etcd has certificates of its own
				}
				for _, e := range strings.Split(mc.flags["etcd-endpoints"], ",") {
					u, err := url.Parse(e)
					if err != nil {
						t.Fatal(err)
					}
					if err := certs[tlsSecret("etcd")].VerifyHostname(u.Hostname()); err != nil {
						t.Errorf("%s/%s: etcd endpoint %s: %v", w.kind, w.name, e, err)
					}
				}
			}
		}
		if o.statefulSet("moegrid-etcd") != nil {
			flags, _, _ := etcdFlags(t, o)
			etcd := certs[tlsSecret("etcd")]
			for _, m := range strings.Split(flags["initial-cluster"], ",") {
				_, peer, _ := strings.Cut(m, "=")
				u, err := url.Parse(peer)
				if err != nil {
					t.Fatal(err)
				}
				if err := etcd.VerifyHostname(u.Hostname()); err != nil {
					t.Errorf("etcd peer %s: %v", peer, err)
				}
			}
			if cn := flags["peer-cert-allowed-cn"]; cn != etcd.Subject.CommonName {
				t.Errorf("--peer-cert-allowed-cn=%s, but the etcd certificate's common name is %q", cn, etcd.Subject.CommonName)
			}
		}
		for _, sm := range o.monitors {
			for _, e := range sm.Spec.Endpoints {
				if e.Port == "metrics" { // etcd's, plain HTTP
					continue
				}
				if e.Scheme != "https" || e.TLSConfig == nil || e.TLSConfig.CA.Secret == nil {
					t.Errorf("ServiceMonitor %s: scheme %q without the cluster CA: moegrid serves /metrics on HTTPS", sm.Name, e.Scheme)
					continue
				}
				cert, ok := certs[e.TLSConfig.CA.Secret.Name]
				if !ok || e.TLSConfig.CA.Secret.Key != "ca.crt" {
					t.Errorf("ServiceMonitor %s: CA from %s/%s, want ca.crt of a component Secret", sm.Name, e.TLSConfig.CA.Secret.Name, e.TLSConfig.CA.Secret.Key)
					continue
				}
				if err := cert.VerifyHostname(e.TLSConfig.ServerName); err != nil {
					t.Errorf("ServiceMonitor %s: serverName %q: %v", sm.Name, e.TLSConfig.ServerName, err)
				}
			}
		}
	})
}

// TestCertManager checks components/cert-manager: a self-signed Issuer
// signs a CA, whose Issuer signs one Certificate per Secret the pods mount,
// each naming the same identity, hosts and usages as the certificate
// `moegrid certs secrets` issues for that Secret.
func TestCertManager(t *testing.T) {
	certs := certsSecrets(t)
	var tg target
	for _, x := range targets {
		if x.name == "gpu+cert-manager" {
			tg = x
		}
	}
	o := rendered(t, tg)
	issuers := map[string]*certIssuer{}
	for _, is := range o.issuers {
		issuers[is.Name] = is
	}
	var ca *certificate
	bySecret := map[string]*certificate{}
	for _, c := range o.certificates {
		if c.Spec.IsCA {
			ca = c
			continue
		}
		bySecret[c.Spec.SecretName] = c
	}
	if ca == nil {
		t.Fatal("no CA Certificate")
	}
	if is := issuers[ca.Spec.IssuerRef.Name]; is == nil || is.Spec.SelfSigned == nil || ca.Spec.IssuerRef.Kind != "Issuer" {
		t.Errorf("the CA is issued by %+v, want the self-signed Issuer", ca.Spec.IssuerRef)
	}
	for secret, want := range certs {
		t.Run(secret, func(t *testing.T) {
			c := bySecret[secret]
			if c == nil {
				t.Fatalf("no Certificate writes %s", secret)
			}
			is := issuers[c.Spec.IssuerRef.Name]
			if is == nil || is.Spec.CA == nil || is.Spec.CA.SecretName != ca.Spec.SecretName || c.Spec.IssuerRef.Kind != "Issuer" || c.Spec.IssuerRef.Group != "cert-manager.io" {
				t.Errorf("issued by %+v, want the CA Issuer of Secret %s", c.Spec.IssuerRef, ca.Spec.SecretName)
			}
			var uris []string
			for _, u := range want.URIs {
				uris = append(uris, u.String())
			}
			if !slices.Equal(c.Spec.URIs, uris) {
				t.Errorf("uris %v, moegrid certs secrets issues %v", c.Spec.URIs, uris)
			}
			if c.Spec.CommonName != want.Subject.CommonName {
				t.Errorf("commonName %q, moegrid certs secrets issues %q", c.Spec.CommonName, want.Subject.CommonName)
			}
			var ips []string
			for _, ip := range want.IPAddresses {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(sorted(c.Spec.DNSNames), sorted(want.DNSNames)) || !slices.Equal(sorted(c.Spec.IPAddresses), sorted(ips)) {
				t.Errorf("hosts %v %v, moegrid certs secrets issues %v %v", c.Spec.DNSNames, c.Spec.IPAddresses, want.DNSNames, ips)
			}
			server := slices.Contains(want.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
			if slices.Contains(c.Spec.Usages, "server auth") != server || !slices.Contains(c.Spec.Usages, "client auth") {
				t.Errorf("usages %v; server auth should be there iff the role serves (%v), client auth always", c.Spec.Usages, server)
			}
			if pk := c.Spec.PrivateKey; pk == nil || pk.Algorithm != "ECDSA" || pk.Encoding != "PKCS8" {
				t.Errorf("private key %+v, want ECDSA in PKCS8 as moegrid writes it", pk)
			}
			if c.Spec.Duration == nil || c.Spec.RenewBefore == nil || c.Spec.RenewBefore.Duration >= c.Spec.Duration.Duration {
				t.Errorf("duration %v, renewBefore %v: renewal must start before the end", c.Spec.Duration, c.Spec.RenewBefore)
			}
		})
	}
	for secret := range bySecret {
		if _, ok := certs[secret]; !ok {
			t.Errorf("Certificate for %s, which moegrid certs secrets does not make", secret)
		}
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
