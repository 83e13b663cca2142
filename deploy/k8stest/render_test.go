package k8stest

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/kustomize/kyaml/kio"
	"sigs.k8s.io/yaml"
)

// repoRoot is the moegrid module's root directory.
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller information")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// k8sDir is deploy/k8s.
func k8sDir(t testing.TB) string { return filepath.Join(repoRoot(t), "deploy", "k8s") }

// extraOverlay is a kustomization that uses what the base and overlays do
// not: both optional components on top of the gpu overlay, with an external
// etcd, as deploy/README.md tells operators to write it.
const extraOverlay = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../overlays/gpu
components:
- ../components/external-etcd
- ../components/servicemonitor
configMapGenerator:
- name: moegrid
  behavior: merge
  literals:
  - MOEGRID_ETCD_ENDPOINTS=https://etcd-0.etcd.infra:2379,https://etcd-1.etcd.infra:2379
  - MOEGRID_PREFIX=/moegrid/prod/
`

// certManagerOverlay is the gpu overlay with its certificates from
// cert-manager, as deploy/README.md tells operators to write it.
const certManagerOverlay = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../overlays/gpu
components:
- ../components/cert-manager
`

// target is something to render: a directory under deploy/k8s.
type target struct {
	name string // as the tests call it
	dir  string // relative to deploy/k8s
}

var targets = []target{
	{"base", "base"},
	{"gpu", "overlays/gpu"},
	{"cpu", "overlays/cpu"},
	{"gpu+external-etcd+servicemonitor", "zz-test-extra"},
	{"gpu+cert-manager", "zz-test-cert-manager"},
}

// testOverlays are the kustomizations the tests add to deploy/k8s, in
// memory only.
var testOverlays = map[string]string{
	"zz-test-extra":        extraOverlay,
	"zz-test-cert-manager": certManagerOverlay,
}

// render builds a kustomization under deploy/k8s with the kustomize API. It
// works on an in-memory copy of deploy/k8s so that the test overlays
// (testOverlays) never touch the working tree.
func render(t testing.TB, dir string) []byte {
	t.Helper()
	mem := filesys.MakeFsInMemory()
	src := k8sDir(t)
	const root = "/k8s"
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		dst := filepath.Join(root, rel)
		if d.IsDir() {
			return mem.MkdirAll(dst)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return mem.WriteFile(dst, data)
	})
	if err != nil {
		t.Fatalf("copying %s: %v", src, err)
	}
	for dir, kustomization := range testOverlays {
		if err := mem.MkdirAll(root + "/" + dir); err != nil {
			t.Fatal(err)
		}
		if err := mem.WriteFile(root+"/"+dir+"/kustomization.yaml", []byte(kustomization)); err != nil {
			t.Fatal(err)
		}
	}
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(mem, filepath.Join(root, dir))
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	return out
}

// serviceMonitor is the part of monitoring.coreos.com/v1 ServiceMonitor that
// the manifests use; decoding is strict, so a field outside it fails the
// test (add it here once it is checked against the CRD).
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
			Scheme        string `json:"scheme,omitempty"`
			TLSConfig     *struct {
				CA struct {
					Secret *corev1.SecretKeySelector `json:"secret,omitempty"`
				} `json:"ca"`
				ServerName string `json:"serverName,omitempty"`
			} `json:"tlsConfig,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// The parts of cert-manager's cert-manager.io/v1 Issuer and Certificate
// that the manifests use, named as in its API reference; decoding is
// strict, so a field outside them (or a misspelt one) fails the test. The
// server's dry run has only stand-in CRDs (no cert-manager here), so these
// are the schema check.
type certIssuer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SelfSigned *struct{} `json:"selfSigned,omitempty"`
		CA         *struct {
			SecretName string `json:"secretName"`
		} `json:"ca,omitempty"`
	} `json:"spec"`
}

type certificate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SecretName string `json:"secretName"`
		IsCA       bool   `json:"isCA,omitempty"`
		CommonName string `json:"commonName,omitempty"`
		Subject    *struct {
			Organizations       []string `json:"organizations,omitempty"`
			OrganizationalUnits []string `json:"organizationalUnits,omitempty"`
		} `json:"subject,omitempty"`
		URIs        []string         `json:"uris,omitempty"`
		DNSNames    []string         `json:"dnsNames,omitempty"`
		IPAddresses []string         `json:"ipAddresses,omitempty"`
		Usages      []string         `json:"usages,omitempty"`
		Duration    *metav1.Duration `json:"duration,omitempty"`
		RenewBefore *metav1.Duration `json:"renewBefore,omitempty"`
		PrivateKey  *struct {
			Algorithm      string `json:"algorithm"`
			Size           int    `json:"size"`
			Encoding       string `json:"encoding"`
			RotationPolicy string `json:"rotationPolicy,omitempty"`
		} `json:"privateKey,omitempty"`
		IssuerRef struct {
			Group string `json:"group"`
			Kind  string `json:"kind"`
			Name  string `json:"name"`
		} `json:"issuerRef"`
	} `json:"spec"`
}

// objects is a rendered set of manifests, decoded.
type objects struct {
	all          []metav1.Object
	kinds        map[string]int
	namespaces   []*corev1.Namespace
	accounts     []*corev1.ServiceAccount
	configMaps   []*corev1.ConfigMap
	services     []*corev1.Service
	claims       []*corev1.PersistentVolumeClaim
	statefulSets []*appsv1.StatefulSet
	deployments  []*appsv1.Deployment
	jobs         []*batchv1.Job
	pdbs         []*policyv1.PodDisruptionBudget
	policies     []*networkingv1.NetworkPolicy
	monitors     []*serviceMonitor
	issuers      []*certIssuer
	certificates []*certificate
}

// decodeAll splits a multi-document YAML stream and decodes each document
// strictly (unknown or duplicate fields fail) into its k8s.io/api type.
func decodeAll(t testing.TB, data []byte) *objects {
	t.Helper()
	nodes, err := kio.FromBytes(data)
	if err != nil {
		t.Fatalf("splitting YAML: %v", err)
	}
	o := &objects{kinds: map[string]int{}}
	for _, n := range nodes {
		doc, err := n.String()
		if err != nil {
			t.Fatal(err)
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("decoding type of\n%s: %v", doc, err)
		}
		gvk := tm.APIVersion + "/" + tm.Kind
		var obj metav1.Object
		switch gvk {
		case "v1/Namespace":
			x := &corev1.Namespace{}
			o.namespaces, obj = append(o.namespaces, x), x
		case "v1/ServiceAccount":
			x := &corev1.ServiceAccount{}
			o.accounts, obj = append(o.accounts, x), x
		case "v1/ConfigMap":
			x := &corev1.ConfigMap{}
			o.configMaps, obj = append(o.configMaps, x), x
		case "v1/Service":
			x := &corev1.Service{}
			o.services, obj = append(o.services, x), x
		case "v1/PersistentVolumeClaim":
			x := &corev1.PersistentVolumeClaim{}
			o.claims, obj = append(o.claims, x), x
		case "apps/v1/StatefulSet":
			x := &appsv1.StatefulSet{}
			o.statefulSets, obj = append(o.statefulSets, x), x
		case "apps/v1/Deployment":
			x := &appsv1.Deployment{}
			o.deployments, obj = append(o.deployments, x), x
		case "batch/v1/Job":
			x := &batchv1.Job{}
			o.jobs, obj = append(o.jobs, x), x
		case "policy/v1/PodDisruptionBudget":
			x := &policyv1.PodDisruptionBudget{}
			o.pdbs, obj = append(o.pdbs, x), x
		case "networking.k8s.io/v1/NetworkPolicy":
			x := &networkingv1.NetworkPolicy{}
			o.policies, obj = append(o.policies, x), x
		case "monitoring.coreos.com/v1/ServiceMonitor":
			x := &serviceMonitor{}
			o.monitors, obj = append(o.monitors, x), x
		case "cert-manager.io/v1/Issuer":
			x := &certIssuer{}
			o.issuers, obj = append(o.issuers, x), x
		case "cert-manager.io/v1/Certificate":
			x := &certificate{}
			o.certificates, obj = append(o.certificates, x), x
		default:
			t.Fatalf("unexpected kind %s in\n%s", gvk, doc)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("strict decoding %s %s: %v", gvk, n.GetName(), err)
		}
		o.kinds[tm.Kind]++
		o.all = append(o.all, obj)
	}
	return o
}

// workload is a pod template with the object that owns it.
type workload struct {
	kind, name string
	replicas   int32
	selector   *metav1.LabelSelector
	template   *corev1.PodTemplateSpec
}

func (o *objects) workloads() []workload {
	var ws []workload
	for _, s := range o.statefulSets {
		ws = append(ws, workload{"StatefulSet", s.Name, deref(s.Spec.Replicas, 1), s.Spec.Selector, &s.Spec.Template})
	}
	for _, d := range o.deployments {
		ws = append(ws, workload{"Deployment", d.Name, deref(d.Spec.Replicas, 1), d.Spec.Selector, &d.Spec.Template})
	}
	for _, j := range o.jobs {
		ws = append(ws, workload{"Job", j.Name, deref(j.Spec.Parallelism, 1), j.Spec.Selector, &j.Spec.Template})
	}
	return ws
}

func (o *objects) configMap(name string) *corev1.ConfigMap {
	for _, c := range o.configMaps {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func (o *objects) statefulSet(name string) *appsv1.StatefulSet {
	for _, s := range o.statefulSets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// The moegrid binary, built once from this checkout (or MOEGRID_BIN) into
// binDir, which TestMain removes.
var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func moegridBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		if p := os.Getenv("MOEGRID_BIN"); p != "" {
			binPath = p
			return
		}
		dir, err := os.MkdirTemp("", "moegrid-k8stest-bin-")
		if err != nil {
			binErr = err
			return
		}
		binDir, binPath = dir, filepath.Join(dir, "moegrid")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/moegrid")
		cmd.Dir = repoRoot(t)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build ./cmd/moegrid: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// flagSpec is one flag as `moegrid CMD --help` prints it.
type flagSpec struct {
	name string
	typ  string // pflag's type name; "" for a bool flag
}

var (
	flagsMu    sync.Mutex
	flagsCache = map[string]map[string]flagSpec{}
	// "  -o, --output string   ..." or "      --no-gossip   ..."
	flagLine = regexp.MustCompile(`^\s+(?:-[a-zA-Z], )?--([a-z0-9][a-z0-9-]*)(?: ([a-zA-Z0-9]+))?(?:\s{2,}|$)`)
)

// commandFlags returns the flags of a moegrid (sub)command, local and
// inherited, as the binary's own help prints them: the tests take the flag
// definitions from the binary, never from a copy.
func commandFlags(t testing.TB, path []string) map[string]flagSpec {
	t.Helper()
	key := strings.Join(path, " ")
	flagsMu.Lock()
	defer flagsMu.Unlock()
	if f, ok := flagsCache[key]; ok {
		return f
	}
	cmd := exec.Command(moegridBinary(t), append(slicesClone(path), "--help")...)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("moegrid %s --help: %v\n%s", key, err, out)
	}
	flags := map[string]flagSpec{}
	inFlags := false
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasSuffix(line, "Flags:"):
			inFlags = true
			continue
		case line == "" || !strings.HasPrefix(line, " "):
			inFlags = false
			continue
		}
		if !inFlags {
			continue
		}
		if m := flagLine.FindStringSubmatch(line); m != nil {
			flags[m[1]] = flagSpec{name: m[1], typ: m[2]}
		}
	}
	if len(flags) < 2 { // every command has at least --help and --log-level
		t.Fatalf("moegrid %s --help: found no flags in\n%s", key, out)
	}
	flagsCache[key] = flags
	return flags
}

// cleanEnv is the environment without MOEGRID_* variables, so that the
// caller's settings never leak into a check.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MOEGRID_") {
			env = append(env, kv)
		}
	}
	return env
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
