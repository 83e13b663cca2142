//go:build e2e

package k8stest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// controlPlane is a real Kubernetes control plane on loopback: etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler, and kwok, which
// plays the kubelet of fake nodes (pods on them turn Running; nothing runs).
type controlPlane struct {
	dir        string
	tools      string // directory of the binaries
	kubeconfig string
	server     string
}

// k8sTools returns the directory holding the control plane's binaries:
// MOEGRID_K8S_TOOLS (e2e.sh builds it with tools/build.sh), else the build
// script's output in the cache directory (built now if missing).
func k8sTools(t *testing.T, ctx context.Context) string {
	t.Helper()
	if dir := os.Getenv("MOEGRID_K8S_TOOLS"); dir != "" {
		return dir
	}
	root := repoRoot(t)
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum", "build.sh"} {
		data, err := os.ReadFile(filepath.Join(root, "deploy", "k8stest", "tools", f))
		if err != nil {
			t.Fatal(err)
		}
		h.Write(data)
	}
	cache := os.Getenv("MOEGRID_K8S_CACHE")
	if cache == "" {
		dir, err := os.UserCacheDir()
		if err != nil {
			t.Fatal(err)
		}
		cache = filepath.Join(dir, "moegrid-k8s")
	}
	dir := filepath.Join(cache, hex.EncodeToString(h.Sum(nil))[:16])
	t.Logf("building the control plane into %s (minutes when cold)", dir)
	if out, err := run(ctx, nil, filepath.Join(root, "deploy", "k8stest", "tools", "build.sh"), dir); err != nil {
		t.Fatalf("tools/build.sh: %v\n%s", err, out)
	}
	return dir
}

func (cp *controlPlane) bin(name string) string { return filepath.Join(cp.tools, "bin", name) }

// kubectl runs the control plane's kubectl against it.
func (cp *controlPlane) kubectl(ctx context.Context, args ...string) (string, error) {
	return run(ctx, nil, cp.bin("kubectl"), append([]string{"--kubeconfig", cp.kubeconfig}, args...)...)
}

func (cp *controlPlane) mustKubectl(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	out, err := cp.kubectl(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// apply applies manifests from memory (through a file: kubectl reads it)
// and returns kubectl's output, warnings (stderr) included.
func (cp *controlPlane) apply(ctx context.Context, name string, manifests []byte, extra ...string) (string, error) {
	f := filepath.Join(cp.dir, name+".yaml")
	if err := os.WriteFile(f, manifests, 0o644); err != nil {
		return "", err
	}
	out, errOut, err := run2(ctx, nil, cp.bin("kubectl"), append([]string{"--kubeconfig", cp.kubeconfig, "apply", "-f", f}, extra...)...)
	return out + errOut, err
}

func startControlPlane(t *testing.T, ctx context.Context, tools string) *controlPlane {
	t.Helper()
	dir := t.TempDir()
	cp := &controlPlane{dir: dir, tools: tools}
	pki := writePKI(t, dir)

	etcdPort, peerPort := freePort(t), freePort(t)
	etcd := startProc(t, dir, "etcd", cp.bin("etcd"),
		"--name=default", "--data-dir="+filepath.Join(dir, "etcd"),
		fmt.Sprintf("--listen-client-urls=http://127.0.0.1:%d", etcdPort),
		fmt.Sprintf("--advertise-client-urls=http://127.0.0.1:%d", etcdPort),
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", peerPort),
		fmt.Sprintf("--initial-advertise-peer-urls=http://127.0.0.1:%d", peerPort),
		fmt.Sprintf("--initial-cluster=default=http://127.0.0.1:%d", peerPort),
		"--unsafe-no-fsync", "--log-level=warn")

	apiPort := freePort(t)
	cp.server = fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	api := startProc(t, dir, "kube-apiserver", cp.bin("kube-apiserver"),
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdPort),
		"--tls-cert-file="+pki.serverCert, "--tls-private-key-file="+pki.serverKey, "--client-ca-file="+pki.caCert,
		"--token-auth-file="+pki.tokens, "--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+pki.saPub, "--service-account-signing-key-file="+pki.saKey,
		"--service-cluster-ip-range=10.96.0.0/12", "--endpoint-reconciler-type=none",
		"--allow-privileged=false", "--v=1")
	cp.kubeconfig = writeKubeconfig(t, dir, cp.server, pki)

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.pool}}}
	start := time.Now()
	eventually(t, 90*time.Second, 200*time.Millisecond, "kube-apiserver ready", func() error {
		for _, p := range []*proc{etcd, api} {
			if p.exited() {
				t.Fatalf("%s exited: %v\n%s", p.name, p.err, tail(p.log, 30))
			}
		}
		req, _ := http.NewRequestWithContext(ctx, "GET", cp.server+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz %d: %s", resp.StatusCode, body)
		}
		return nil
	})
	t.Logf("etcd and kube-apiserver ready in %v", time.Since(start).Round(100*time.Millisecond))

	startProc(t, dir, "kube-controller-manager", cp.bin("kube-controller-manager"),
		"--kubeconfig="+cp.kubeconfig, "--controllers=*", "--leader-elect=false",
		"--service-account-private-key-file="+pki.saKey, "--root-ca-file="+pki.caCert,
		"--use-service-account-credentials=false", "--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", freePort(t)),
		"--cluster-signing-cert-file="+pki.caCert, "--cluster-signing-key-file="+pki.caKey,
		"--node-monitor-grace-period=60s", "--v=1")
	startProc(t, dir, "kube-scheduler", cp.bin("kube-scheduler"),
		"--kubeconfig="+cp.kubeconfig, "--authentication-kubeconfig="+cp.kubeconfig, "--authorization-kubeconfig="+cp.kubeconfig,
		"--leader-elect=false", "--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", freePort(t)), "--v=1")
	stages, err := filepath.Glob(filepath.Join(tools, "kwok-stages", "*.yaml"))
	if err != nil || len(stages) == 0 {
		t.Fatalf("no kwok stages in %s", tools)
	}
	startProc(t, dir, "kwok", cp.bin("kwok"),
		"--kubeconfig="+cp.kubeconfig, "--config="+strings.Join(stages, ","),
		"--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
		"--node-lease-duration-seconds=40", "--cidr=10.244.0.0/16", "--node-ip=10.240.0.1",
		fmt.Sprintf("--server-address=127.0.0.1:%d", freePort(t)))
	// The controller manager is up once it has made the default namespace's
	// service account.
	eventually(t, 90*time.Second, 500*time.Millisecond, "kube-controller-manager up", func() error {
		_, err := cp.kubectl(ctx, "get", "serviceaccount", "default", "-n", "default")
		return err
	})
	return cp
}

const adminToken = "moegrid-e2e-admin-token"

type pkiFiles struct {
	caCert, caKey, serverCert, serverKey, saKey, saPub, tokens string
	caPEM                                                      []byte
	pool                                                       *x509.CertPool
}

// writePKI makes a CA, a serving certificate for 127.0.0.1, the service
// account signing key and a token file with one cluster admin.
func writePKI(t *testing.T, dir string) pkiFiles {
	t.Helper()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyPEM := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	now := time.Now()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "moegrid-e2e-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	saKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	saPubDER, _ := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	var p pkiFiles
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	p.caCert = write("ca.crt", p.caPEM)
	p.caKey = write("ca.key", keyPEM(caKey))
	p.serverCert = write("server.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}))
	p.serverKey = write("server.key", keyPEM(srvKey))
	p.saKey = write("sa.key", keyPEM(saKey))
	p.saPub = write("sa.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPubDER}))
	p.tokens = write("tokens.csv", []byte(adminToken+`,admin,admin-uid,"system:masters"`+"\n"))
	p.pool = x509.NewCertPool()
	p.pool.AddCert(ca)
	return p
}

func writeKubeconfig(t *testing.T, dir, server string, pki pkiFiles) string {
	t.Helper()
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
`, server, pki.caCert, adminToken)
	p := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// stubCRD is a stand-in for another project's CRD: enough for the API
// server to know the kind, so that a component's dry run checks names,
// namespaces and admission (not the spec's schema, which the offline tests
// hold to the fields they know).
func stubCRD(group, kind, plural string) []byte {
	return []byte(fmt.Sprintf(`apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: %[3]s.%[1]s
spec:
  group: %[1]s
  scope: Namespaced
  names: {kind: %[2]s, listKind: %[2]sList, plural: %[3]s, singular: %[4]s}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-preserve-unknown-fields: true
`, group, kind, plural, strings.ToLower(kind)))
}

// serviceMonitorCRD stands in for the Prometheus Operator's CRD.
var serviceMonitorCRD = stubCRD("monitoring.coreos.com", "ServiceMonitor", "servicemonitors")

// certManagerCRDs stand in for cert-manager's Issuer and Certificate
// (cert-manager is not available offline); the offline test decodes their
// specs strictly into the fields of cert-manager's API reference.
var certManagerCRDs = docs(
	stubCRD("cert-manager.io", "Issuer", "issuers"),
	stubCRD("cert-manager.io", "Certificate", "certificates"),
)

// clusterSecrets runs `moegrid certs secrets` for namespace moegrid: the
// Secrets the pods mount.
func clusterSecrets(t *testing.T, ctx context.Context) []byte {
	t.Helper()
	out, err := run(ctx, cleanEnv(), moegridBinary(t), "certs", "secrets", "--dir", filepath.Join(t.TempDir(), "certs"), "--namespace", "moegrid")
	if err != nil {
		t.Fatal(err)
	}
	return []byte(out)
}

// node is a fake machine for kwok.
func fakeNode(name string, gpu bool, zone string) []byte {
	labels := map[string]string{
		"kubernetes.io/hostname":           name,
		"kubernetes.io/os":                 "linux",
		"kubernetes.io/arch":               "amd64",
		"topology.kubernetes.io/zone":      zone,
		"node.kubernetes.io/instance-type": "fake",
		"type":                             "kwok",
	}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("32"),
		corev1.ResourceMemory: resource.MustParse("128Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	var taints []corev1.Taint
	if gpu {
		// An 8-GPU machine: room for more than one expert node as far as
		// resources go, so that only the anti-affinity keeps a second off.
		labels["nvidia.com/gpu.present"] = "true"
		capacity["nvidia.com/gpu"] = resource.MustParse("8")
		capacity[corev1.ResourceCPU] = resource.MustParse("96")
		capacity[corev1.ResourceMemory] = resource.MustParse("1Ti")
		taints = append(taints, corev1.Taint{Key: "nvidia.com/gpu", Value: "present", Effect: corev1.TaintEffectNoSchedule})
	}
	n := corev1.Node{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Labels:      labels,
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
		},
		Spec:   corev1.NodeSpec{Taints: taints},
		Status: corev1.NodeStatus{Capacity: capacity, Allocatable: capacity},
	}
	data, _ := yaml.Marshal(n)
	return data
}

// hostPathPV is a volume for the claims to bind to (no provisioner here).
func hostPathPV(name, size string, mode corev1.PersistentVolumeAccessMode) []byte {
	pv := corev1.PersistentVolume{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "PersistentVolume"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{mode},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/lib/fake/" + name}},
		},
	}
	data, _ := yaml.Marshal(pv)
	return data
}

func (cp *controlPlane) pods(ctx context.Context, selector string) ([]corev1.Pod, error) {
	out, err := cp.kubectl(ctx, "get", "pods", "-n", "moegrid", "-l", selector, "-o", "json")
	if err != nil {
		return nil, err
	}
	var list corev1.PodList
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, err
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
	return list.Items, nil
}

func podCondition(p *corev1.Pod, typ corev1.PodConditionType) *corev1.PodCondition {
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == typ {
			return &p.Status.Conditions[i]
		}
	}
	return nil
}

const expertSelector = "app.kubernetes.io/name=moegrid,app.kubernetes.io/component=expertnode"

// TestKubernetes runs the manifests against a real control plane.
func TestKubernetes(t *testing.T) {
	skipIf(t, "kubernetes")
	ctx := testContext(t, 20*time.Minute)
	tools := k8sTools(t, ctx)
	cp := startControlPlane(t, ctx, tools)
	t.Logf("control plane: %s", strings.TrimSpace(cp.mustKubectl(t, ctx, "version", "-o", "yaml")))

	rendered := map[string][]byte{}
	for _, tg := range targets {
		rendered[tg.name] = render(t, tg.dir)
	}

	// kubectl's own kustomize renders the overlays as the kustomize API does.
	t.Run("kubectl-kustomize", func(t *testing.T) {
		for _, tg := range targets[:3] {
			out, err := cp.kubectl(ctx, "kustomize", filepath.Join(k8sDir(t), tg.dir))
			if err != nil {
				t.Fatal(err)
			}
			got, want := decodeAll(t, []byte(out)), decodeAll(t, rendered[tg.name])
			if !slices.Equal(objectNames(got), objectNames(want)) {
				t.Errorf("%s: kubectl kustomize renders %v\nthe kustomize API %v", tg.name, objectNames(got), objectNames(want))
			}
		}
	})

	// Dry runs on the server: decoding with unknown-field checks,
	// defaulting, validation and admission (PodSecurity "restricted"), for
	// every overlay, the components and the Jobs. The namespace must exist
	// for real first (a dry run cannot create it).
	t.Run("dry-run", func(t *testing.T) {
		ns := decodeAll(t, rendered["base"]).namespaces[0]
		nsYAML, _ := yaml.Marshal(ns)
		if _, err := cp.apply(ctx, "namespace", nsYAML); err != nil {
			t.Fatal(err)
		}
		if _, err := cp.apply(ctx, "servicemonitor-crd", serviceMonitorCRD); err != nil {
			t.Fatal(err)
		}
		if _, err := cp.apply(ctx, "cert-manager-crds", certManagerCRDs); err != nil {
			t.Fatal(err)
		}
		cp.mustKubectl(t, ctx, "wait", "--for=condition=Established", "--timeout=60s", "crd/servicemonitors.monitoring.coreos.com",
			"crd/issuers.cert-manager.io", "crd/certificates.cert-manager.io")
		// The Secrets `moegrid certs secrets` prints are valid
		// kubernetes.io/tls Secrets (the server checks tls.crt and tls.key).
		if out, err := cp.apply(ctx, "dry-run-secrets", clusterSecrets(t, ctx), "--dry-run=server"); err != nil {
			t.Errorf("moegrid certs secrets: %v", err)
		} else if strings.Contains(out, "Warning") {
			t.Errorf("moegrid certs secrets: warnings:\n%s", out)
		}
		for _, tg := range targets {
			out, err := cp.apply(ctx, "dry-run-"+strings.ReplaceAll(tg.name, "+", "-"), rendered[tg.name], "--dry-run=server")
			if err != nil {
				t.Errorf("%s: %v", tg.name, err)
				continue
			}
			if strings.Contains(out, "Warning") {
				t.Errorf("%s: warnings:\n%s", tg.name, out)
			}
		}
		jobs, _ := filepath.Glob(filepath.Join(k8sDir(t), "jobs", "*.yaml"))
		for _, j := range jobs {
			data, err := os.ReadFile(j)
			if err != nil {
				t.Fatal(err)
			}
			out, err := cp.apply(ctx, "dry-run-job-"+filepath.Base(j), data, "--dry-run=server")
			if err != nil {
				t.Errorf("%s: %v", filepath.Base(j), err)
			} else if strings.Contains(out, "Warning") {
				t.Errorf("%s: warnings:\n%s", filepath.Base(j), out)
			}
		}
		// The checks bite: a pod template that breaks the namespace's
		// "restricted" Pod Security Standard draws a warning...
		priv := strings.Replace(string(rendered["gpu"]), "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", 1)
		if out, err := cp.apply(ctx, "dry-run-privileged", []byte(priv), "--dry-run=server"); err != nil || !strings.Contains(out, "would violate PodSecurity") {
			t.Errorf("a pod template allowing privilege escalation drew no PodSecurity warning: %v\n%s", err, out)
		}
		// ... and an unknown field is refused.
		bad := strings.Replace(string(rendered["gpu"]), "podManagementPolicy: Parallel", "podManagementPolicy: Parallel\n  replica: 3", 1)
		if _, err := cp.apply(ctx, "dry-run-bad", []byte(bad), "--dry-run=server"); err == nil || !strings.Contains(err.Error(), "unknown field") {
			t.Errorf("a StatefulSet with an unknown field passed the server's dry run: %v", err)
		}
	})
	if t.Failed() {
		return
	}

	// The gpu overlay for real, on 8 fake GPU machines and 2 CPU ones: the
	// scheduler must put the 8 expert nodes on 8 distinct GPU machines.
	var gpuNodes []string
	t.Run("schedule-8-gpu-nodes", func(t *testing.T) {
		var nodes [][]byte
		for i := range 8 {
			name := fmt.Sprintf("gpu-%d", i)
			gpuNodes = append(gpuNodes, name)
			nodes = append(nodes, fakeNode(name, true, fmt.Sprintf("zone-%c", 'a'+i%3)))
		}
		for i := range 2 {
			nodes = append(nodes, fakeNode(fmt.Sprintf("cpu-%d", i), false, fmt.Sprintf("zone-%c", 'a'+i%3)))
		}
		for i := range 3 {
			nodes = append(nodes, hostPathPV(fmt.Sprintf("etcd-%d", i), "8Gi", corev1.ReadWriteOnce))
		}
		nodes = append(nodes, hostPathPV("model", "120Gi", corev1.ReadWriteMany))
		if _, err := cp.apply(ctx, "nodes", docs(nodes...)); err != nil {
			t.Fatal(err)
		}
		eventually(t, 60*time.Second, time.Second, "fake nodes Ready", func() error {
			out, err := cp.kubectl(ctx, "get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}")
			if err != nil {
				return err
			}
			if n := strings.Count(out, "=True"); n != 10 {
				return fmt.Errorf("%d of 10 Ready: %s", n, out)
			}
			return nil
		})
		// The Secrets first, as an operator applies them: every pod mounts
		// its certificate and the gossip key.
		applied, err := cp.apply(ctx, "secrets", clusterSecrets(t, ctx))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("secrets: %s", strings.TrimSpace(applied))
		if _, err := cp.apply(ctx, "gpu", rendered["gpu"]); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		eventually(t, 3*time.Minute, time.Second, "every moegrid pod Running", func() error {
			pods, err := cp.pods(ctx, "app.kubernetes.io/name=moegrid")
			if err != nil {
				return err
			}
			running := 0
			var pending []string
			for _, p := range pods {
				if p.Status.Phase == corev1.PodRunning {
					running++
				} else if c := podCondition(&p, corev1.PodScheduled); c != nil && c.Status != corev1.ConditionTrue {
					pending = append(pending, p.Name+": "+c.Message)
				}
			}
			// 3 etcd + 2 coordinators + 8 expert nodes + 2 routers
			if running != 15 {
				return fmt.Errorf("%d of 15 pods Running; unscheduled: %v", running, pending)
			}
			return nil
		})
		t.Logf("all 15 pods scheduled and Running in %v:\n%s", time.Since(start).Round(time.Second),
			cp.mustKubectl(t, ctx, "get", "pods,pvc", "-n", "moegrid", "-o", "wide"))
		// Every Secret a pod mounts, but the optional API keys, is there.
		all, err := cp.pods(ctx, "app.kubernetes.io/name=moegrid")
		if err != nil {
			t.Fatal(err)
		}
		have := strings.Fields(cp.mustKubectl(t, ctx, "get", "secrets", "-n", "moegrid", "-o", "jsonpath={.items[*].metadata.name}"))
		for _, p := range all {
			for _, v := range p.Spec.Volumes {
				if v.Secret != nil && !deref(v.Secret.Optional, false) && !slices.Contains(have, v.Secret.SecretName) {
					t.Errorf("pod %s mounts Secret %s, which does not exist (have %v)", p.Name, v.Secret.SecretName, have)
				}
			}
		}
		pods, err := cp.pods(ctx, expertSelector)
		if err != nil {
			t.Fatal(err)
		}
		on := map[string]string{}
		for _, p := range pods {
			if prev, dup := on[p.Spec.NodeName]; dup {
				t.Errorf("%s and %s are both on %s", prev, p.Name, p.Spec.NodeName)
			}
			on[p.Spec.NodeName] = p.Name
			if !slices.Contains(gpuNodes, p.Spec.NodeName) {
				t.Errorf("%s is on %s, not a GPU machine", p.Name, p.Spec.NodeName)
			}
		}
		if len(on) != 8 {
			t.Errorf("the 8 expert nodes are on %d machines: %v", len(on), on)
		}
		t.Logf("expert nodes: %v", on)
		// PodSecurity "restricted" is enforced on the namespace, so these
		// pods passed it; and the GPUs are counted.
		out := cp.mustKubectl(t, ctx, "describe", "node", gpuNodes[0])
		if !regexp.MustCompile(`nvidia.com/gpu\s+1\s+1`).MatchString(out) {
			t.Errorf("the expert node's GPU is not counted on %s:\n%s", gpuNodes[0], out)
		}
	})
	if t.Failed() {
		return
	}

	// Take one GPU machine away: with 7, the 8th expert node has nowhere to
	// go but a machine that already has one, and the required anti-affinity
	// keeps it Pending.
	t.Run("7-gpu-nodes-one-pending", func(t *testing.T) {
		pods, err := cp.pods(ctx, expertSelector)
		if err != nil {
			t.Fatal(err)
		}
		gone := gpuNodes[len(gpuNodes)-1]
		var victim string
		for _, p := range pods {
			if p.Spec.NodeName == gone {
				victim = p.Name
			}
		}
		cp.mustKubectl(t, ctx, "delete", "node", gone)
		cp.mustKubectl(t, ctx, "delete", "pod", "-n", "moegrid", victim, "--grace-period=0", "--force")
		var msg string
		eventually(t, 2*time.Minute, time.Second, victim+" recreated and unschedulable", func() error {
			pods, err := cp.pods(ctx, expertSelector)
			if err != nil {
				return err
			}
			for _, p := range pods {
				if p.Name != victim {
					continue
				}
				c := podCondition(&p, corev1.PodScheduled)
				if p.Spec.NodeName != "" || c == nil || c.Reason != corev1.PodReasonUnschedulable {
					return fmt.Errorf("%s on %q, condition %+v", p.Name, p.Spec.NodeName, c)
				}
				msg = c.Message
				return nil
			}
			return fmt.Errorf("%s not recreated yet", victim)
		})
		t.Logf("%s: %s", victim, msg)
		if !strings.Contains(msg, "7 node(s) didn't match pod anti-affinity rules") {
			t.Errorf("the scheduler's reason does not name the anti-affinity on the 7 GPU machines: %s", msg)
		}
		// And it stays so: nothing else moves to make room.
		time.Sleep(5 * time.Second)
		pods, err = cp.pods(ctx, expertSelector)
		if err != nil {
			t.Fatal(err)
		}
		running, pending := 0, 0
		nodes := map[string]bool{}
		for _, p := range pods {
			switch p.Status.Phase {
			case corev1.PodRunning:
				running++
				nodes[p.Spec.NodeName] = true
			case corev1.PodPending:
				pending++
			}
		}
		if running != 7 || pending != 1 || len(nodes) != 7 {
			t.Errorf("%d Running on %d machines, %d Pending; want 7 on 7 and 1", running, len(nodes), pending)
		}
	})
}

func objectNames(o *objects) []string {
	var out []string
	for _, obj := range o.all {
		out = append(out, fmt.Sprintf("%T/%s", obj, obj.GetName()))
	}
	sort.Strings(out)
	return out
}
