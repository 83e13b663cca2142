package k8stest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dustin/go-humanize"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Mixtral-8x7B's shape (config.json of mistralai/Mixtral-8x7B-v0.1), for
// the sizing checks.
const (
	mixtralLayers       = 32
	mixtralHidden       = 4096
	mixtralIntermediate = 14336
	bf16Bytes           = 2
	// One expert over all layers: w1, w2, w3 of hidden x intermediate.
	mixtralExpertBytes = mixtralLayers * 3 * mixtralHidden * mixtralIntermediate * bf16Bytes
)

// rendered renders and decodes every target once per test binary.
var renderedCache = map[string]*objects{}

func rendered(t *testing.T, tg target) *objects {
	t.Helper()
	if o, ok := renderedCache[tg.name]; ok {
		return o
	}
	o := decodeAll(t, render(t, tg.dir))
	renderedCache[tg.name] = o
	return o
}

func forEachTarget(t *testing.T, fn func(t *testing.T, o *objects)) {
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) { fn(t, rendered(t, tg)) })
	}
}

func TestRenderAndDecodeStrictly(t *testing.T) {
	want := map[string]map[string]int{
		"base": {
			"Namespace": 1, "ServiceAccount": 1, "ConfigMap": 4, "Service": 4, "PersistentVolumeClaim": 1,
			"StatefulSet": 2, "Deployment": 2, "PodDisruptionBudget": 4, "NetworkPolicy": 7,
		},
		"gpu+external-etcd+servicemonitor": {
			"Namespace": 1, "ServiceAccount": 1, "ConfigMap": 4, "Service": 3, "PersistentVolumeClaim": 1,
			"StatefulSet": 1, "Deployment": 2, "PodDisruptionBudget": 3, "NetworkPolicy": 6, "ServiceMonitor": 4,
		},
	}
	want["gpu"], want["cpu"] = want["base"], want["base"]
	want["gpu+cert-manager"] = map[string]int{"Issuer": 2, "Certificate": 6}
	for k, n := range want["base"] {
		want["gpu+cert-manager"][k] = n
	}
	forEachTarget(t, func(t *testing.T, o *objects) {
		w := want[strings.TrimPrefix(t.Name(), "TestRenderAndDecodeStrictly/")]
		for _, k := range sortedKeys(w) {
			if o.kinds[k] != w[k] {
				t.Errorf("%d %s, want %d", o.kinds[k], k, w[k])
			}
		}
		for _, k := range sortedKeys(o.kinds) {
			if _, ok := w[k]; !ok {
				t.Errorf("unexpected %d %s", o.kinds[k], k)
			}
		}
		for _, obj := range o.all {
			if _, isNS := obj.(*corev1.Namespace); !isNS && obj.GetNamespace() != "moegrid" {
				t.Errorf("%T %s is in namespace %q, want moegrid", obj, obj.GetName(), obj.GetNamespace())
			}
		}
	})
}

// TestSelectors checks every label selector against the pods it is meant to
// select: a selector that selects nothing is accepted by the API server and
// silently does nothing.
func TestSelectors(t *testing.T) {
	forEachTarget(t, func(t *testing.T, o *objects) {
		ws := o.workloads()
		selects := func(sel *metav1.LabelSelector) []workload {
			t.Helper()
			s, err := metav1.LabelSelectorAsSelector(sel)
			if err != nil {
				t.Fatalf("selector %v: %v", sel, err)
			}
			var out []workload
			for _, w := range ws {
				if s.Matches(labels.Set(w.template.Labels)) {
					out = append(out, w)
				}
			}
			return out
		}
		for _, w := range ws {
			if w.kind == "Job" {
				continue
			}
			if got := selects(w.selector); len(got) != 1 || got[0].name != w.name {
				t.Errorf("%s %s: selector %v selects %v, want only its own pods", w.kind, w.name, w.selector, names(got))
			}
			spec := &w.template.Spec
			if a := spec.Affinity; a != nil && a.PodAntiAffinity != nil {
				for _, term := range a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
					if got := selects(term.LabelSelector); len(got) != 1 || got[0].name != w.name {
						t.Errorf("%s %s: required anti-affinity selects %v", w.kind, w.name, names(got))
					}
				}
				for _, term := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
					if got := selects(term.PodAffinityTerm.LabelSelector); len(got) != 1 || got[0].name != w.name {
						t.Errorf("%s %s: preferred anti-affinity selects %v", w.kind, w.name, names(got))
					}
				}
			}
			for _, c := range spec.TopologySpreadConstraints {
				if got := selects(c.LabelSelector); len(got) != 1 || got[0].name != w.name {
					t.Errorf("%s %s: topology spread selects %v", w.kind, w.name, names(got))
				}
			}
		}
		for _, svc := range o.services {
			got := selects(&metav1.LabelSelector{MatchLabels: svc.Spec.Selector})
			if len(got) != 1 {
				t.Errorf("Service %s selects %v, want one workload", svc.Name, names(got))
				continue
			}
			for _, p := range svc.Spec.Ports {
				if _, ok := findPort(got[0].template.Spec.Containers, p.TargetPort, p.Protocol); !ok {
					t.Errorf("Service %s port %s: target port %s is no container port of %s", svc.Name, p.Name, p.TargetPort.String(), got[0].name)
				}
			}
		}
		for _, sts := range o.statefulSets {
			if !hasService(o, sts.Spec.ServiceName, true) {
				t.Errorf("StatefulSet %s: serviceName %q is no headless Service", sts.Name, sts.Spec.ServiceName)
			}
		}
		for _, pdb := range o.pdbs {
			got := selects(pdb.Spec.Selector)
			if len(got) != 1 {
				t.Errorf("PDB %s selects %v, want one workload", pdb.Name, names(got))
				continue
			}
			r := got[0].replicas
			switch {
			case pdb.Spec.MinAvailable != nil && pdb.Spec.MaxUnavailable != nil:
				t.Errorf("PDB %s: both minAvailable and maxUnavailable", pdb.Name)
			case pdb.Spec.MinAvailable != nil && pdb.Spec.MinAvailable.IntValue() >= int(r):
				t.Errorf("PDB %s: minAvailable %s of %d replicas blocks every eviction", pdb.Name, pdb.Spec.MinAvailable, r)
			case pdb.Spec.MaxUnavailable != nil && pdb.Spec.MaxUnavailable.IntValue() < 1:
				t.Errorf("PDB %s: maxUnavailable %s blocks every eviction", pdb.Name, pdb.Spec.MaxUnavailable)
			}
		}
		for _, np := range o.policies {
			targets := ws
			if len(np.Spec.PodSelector.MatchLabels)+len(np.Spec.PodSelector.MatchExpressions) > 0 {
				targets = selects(&np.Spec.PodSelector)
				if len(targets) == 0 {
					t.Errorf("NetworkPolicy %s selects no pods", np.Name)
				}
			}
			for _, rule := range np.Spec.Ingress {
				for _, peer := range rule.From {
					if peer.PodSelector != nil && peer.NamespaceSelector == nil &&
						len(peer.PodSelector.MatchLabels)+len(peer.PodSelector.MatchExpressions) > 0 && len(selects(peer.PodSelector)) == 0 {
						t.Errorf("NetworkPolicy %s: peer %v selects no pods", np.Name, peer.PodSelector)
					}
				}
				for _, p := range rule.Ports {
					found := false
					for _, w := range targets {
						if _, ok := findPort(w.template.Spec.Containers, *p.Port, deref(p.Protocol, corev1.ProtocolTCP)); ok {
							found = true
						}
					}
					if !found {
						t.Errorf("NetworkPolicy %s: port %s/%s is no container port of %v", np.Name, p.Port.String(), deref(p.Protocol, ""), names(targets))
					}
				}
			}
		}
		for _, sm := range o.monitors {
			s, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
			if err != nil {
				t.Fatal(err)
			}
			ports := map[string]bool{}
			n := 0
			for _, svc := range o.services {
				if s.Matches(labels.Set(svc.Labels)) {
					n++
					for _, p := range svc.Spec.Ports {
						ports[p.Name] = true
					}
				}
			}
			if n == 0 && sm.Name != "moegrid-etcd" { // no in-cluster etcd with external-etcd
				t.Errorf("ServiceMonitor %s selects no Service", sm.Name)
			}
			for _, e := range sm.Spec.Endpoints {
				if n > 0 && !ports[e.Port] {
					t.Errorf("ServiceMonitor %s: no selected Service has a port %q", sm.Name, e.Port)
				}
			}
		}
	})
}

func names(ws []workload) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.kind+"/"+w.name)
	}
	return out
}

func hasService(o *objects, name string, headless bool) bool {
	for _, s := range o.services {
		if s.Name == name && (!headless || s.Spec.ClusterIP == corev1.ClusterIPNone) {
			return true
		}
	}
	return false
}

// findPort finds a container port by name or number (and protocol).
func findPort(cs []corev1.Container, p intstr.IntOrString, proto corev1.Protocol) (corev1.ContainerPort, bool) {
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	for _, c := range cs {
		for _, cp := range c.Ports {
			cpProto := cp.Protocol
			if cpProto == "" {
				cpProto = corev1.ProtocolTCP
			}
			if cpProto != proto {
				continue
			}
			if p.Type == intstr.String && cp.Name == p.StrVal || p.Type == intstr.Int && cp.ContainerPort == p.IntVal {
				return cp, true
			}
		}
	}
	return corev1.ContainerPort{}, false
}

// podEnv is a container's environment as the kubelet would give it, with
// the downward-API values replaced by examples.
func podEnv(t *testing.T, o *objects, c *corev1.Container) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef == nil {
			t.Errorf("container %s: envFrom other than a ConfigMap", c.Name)
			continue
		}
		cm := o.configMap(ef.ConfigMapRef.Name)
		if cm == nil {
			t.Errorf("container %s: envFrom ConfigMap %q does not exist", c.Name, ef.ConfigMapRef.Name)
			continue
		}
		for k, v := range cm.Data {
			env[ef.Prefix+k] = v
		}
	}
	examples := map[string]string{
		"metadata.name":      "pod-0",
		"metadata.namespace": "moegrid",
		"status.podIP":       "10.1.2.3",
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil:
			v, ok := examples[e.ValueFrom.FieldRef.FieldPath]
			if !ok {
				t.Errorf("container %s: env %s: field %s has no example here", c.Name, e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
			env[e.Name] = v
		case e.ValueFrom.ResourceFieldRef != nil:
			env[e.Name] = "2"
		case e.ValueFrom.SecretKeyRef != nil:
			env[e.Name] = "secret"
		default:
			t.Errorf("container %s: env %s: unsupported valueFrom", c.Name, e.Name)
		}
	}
	return env
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expand replaces $(VAR) as the kubelet does; an undefined variable fails,
// since the kubelet would pass it on literally.
func expand(t *testing.T, s string, env map[string]string) string {
	t.Helper()
	return varRef.ReplaceAllStringFunc(s, func(ref string) string {
		name := ref[2 : len(ref)-1]
		v, ok := env[name]
		if !ok {
			t.Errorf("%q refers to $(%s), which the container's env does not define", s, name)
		}
		return v
	})
}

func isMoegrid(image string) bool {
	name := image
	if i := strings.LastIndex(name, "/"); i >= 0 {
		name = name[i+1:]
	}
	name, _, _ = strings.Cut(name, "@")
	name, _, _ = strings.Cut(name, ":")
	return name == "moegrid"
}

// moegridCommand is a moegrid container's command line, resolved.
type moegridCommand struct {
	path  []string          // subcommand, e.g. [expertnode] or [model synth]
	flags map[string]string // --name → value, from args and then env
	order []string          // flag names as given in args
}

// parseMoegrid checks a moegrid container's args and MOEGRID_* environment
// against the flags the binary defines, and returns the command line.
func parseMoegrid(t *testing.T, o *objects, c *corev1.Container) moegridCommand {
	t.Helper()
	if len(c.Command) > 0 {
		t.Errorf("container %s: command %v overrides the image's entrypoint", c.Name, c.Command)
	}
	env := podEnv(t, o, c)
	var mc moegridCommand
	args := c.Args
	for len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		mc.path, args = append(mc.path, args[0]), args[1:]
	}
	if len(mc.path) == 0 {
		t.Fatalf("container %s: no moegrid subcommand in args %v", c.Name, c.Args)
	}
	defs := commandFlags(t, mc.path)
	mc.flags = map[string]string{}
	for len(args) > 0 {
		a := args[0]
		args = args[1:]
		if !strings.HasPrefix(a, "--") {
			t.Errorf("container %s: argument %q is not a --flag (moegrid %s takes none)", c.Name, a, strings.Join(mc.path, " "))
			continue
		}
		name, val, hasVal := strings.Cut(a[2:], "=")
		def, ok := defs[name]
		if !ok {
			t.Errorf("container %s: moegrid %s has no flag --%s (flags: %v)", c.Name, strings.Join(mc.path, " "), name, sortedKeys(defs))
			continue
		}
		if !hasVal {
			if def.typ == "" {
				val = "true"
			} else if len(args) > 0 {
				val, args = args[0], args[1:]
			} else {
				t.Errorf("container %s: --%s needs a value", c.Name, name)
			}
		}
		mc.flags[name] = expand(t, val, env)
		mc.order = append(mc.order, name)
	}
	for _, k := range sortedKeys(env) {
		if !strings.HasPrefix(k, "MOEGRID_") {
			continue
		}
		name := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k, "MOEGRID_"), "_", "-"))
		if _, ok := defs[name]; !ok {
			t.Errorf("container %s: %s names no flag of moegrid %s (it would be ignored)", c.Name, k, strings.Join(mc.path, " "))
			continue
		}
		if _, set := mc.flags[name]; !set { // a flag in args wins over the environment
			mc.flags[name] = env[k]
		}
	}
	return mc
}

// checkParses has the binary parse the whole command line: values of the
// wrong type (a duration without a unit, "22GB" for an int) fail here.
func (mc moegridCommand) checkParses(t *testing.T, container string) {
	t.Helper()
	args := slicesClone(mc.path)
	for _, name := range sortedKeys(mc.flags) {
		args = append(args, "--"+name+"="+mc.flags[name])
	}
	cmd := exec.Command(moegridBinary(t), append(args, "--help")...)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("container %s: moegrid rejects its command line %v: %v\n%s", container, args, err, out)
		return
	}
	if !strings.Contains(string(out), "moegrid "+strings.Join(mc.path, " ")) {
		t.Errorf("container %s: %q is not a moegrid command:\n%s", container, strings.Join(mc.path, " "), out)
	}
}

func addrPort(t *testing.T, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Errorf("address %q: %v", addr, err)
		return 0
	}
	n, _ := strconv.Atoi(p)
	return int32(n)
}

// probePort resolves a probe's port to a container port number.
func probePort(t *testing.T, c *corev1.Container, pr *corev1.Probe) (int32, string) {
	t.Helper()
	switch {
	case pr.GRPC != nil:
		if _, ok := findPort([]corev1.Container{*c}, intstr.FromInt32(pr.GRPC.Port), corev1.ProtocolTCP); !ok {
			t.Errorf("container %s: gRPC probe port %d is no container port", c.Name, pr.GRPC.Port)
		}
		return pr.GRPC.Port, "grpc"
	case pr.HTTPGet != nil:
		cp, ok := findPort([]corev1.Container{*c}, pr.HTTPGet.Port, corev1.ProtocolTCP)
		if !ok {
			t.Errorf("container %s: HTTP probe port %s is no container port", c.Name, pr.HTTPGet.Port.String())
		}
		return cp.ContainerPort, "http"
	case pr.TCPSocket != nil:
		cp, ok := findPort([]corev1.Container{*c}, pr.TCPSocket.Port, corev1.ProtocolTCP)
		if !ok {
			t.Errorf("container %s: TCP probe port %s is no container port", c.Name, pr.TCPSocket.Port.String())
		}
		return cp.ContainerPort, "tcp"
	}
	t.Errorf("container %s: probe with no handler", c.Name)
	return 0, ""
}

// TestMoegridContainers checks every moegrid container against the binary:
// subcommand, flags and MOEGRID_* settings exist and parse; the probes and
// container ports are the ports the flags make it listen on.
func TestMoegridContainers(t *testing.T) {
	forEachTarget(t, func(t *testing.T, o *objects) {
		seen := map[string]bool{}
		for _, w := range o.workloads() {
			for i := range w.template.Spec.Containers {
				c := &w.template.Spec.Containers[i]
				if !isMoegrid(c.Image) {
					continue
				}
				mc := parseMoegrid(t, o, c)
				mc.checkParses(t, c.Name)
				seen[strings.Join(mc.path, " ")] = true
				checkListenPorts(t, c, mc)
			}
		}
		for _, role := range []string{"coordinator", "expertnode", "router"} {
			if !seen[role] {
				t.Errorf("no container runs moegrid %s", role)
			}
		}
	})
}

func checkListenPorts(t *testing.T, c *corev1.Container, mc moegridCommand) {
	t.Helper()
	want := map[string]int32{} // probe kind → port the flags listen on
	for flag, kind := range map[string]string{"grpc-addr": "grpc", "http-addr": "http"} {
		addr, ok := mc.flags[flag]
		if !ok {
			t.Errorf("container %s: --%s not set: the default listens on loopback only", c.Name, flag)
			continue
		}
		if h, _, _ := net.SplitHostPort(addr); h == "127.0.0.1" || h == "localhost" {
			t.Errorf("container %s: --%s=%s listens on loopback", c.Name, flag, addr)
		}
		p := addrPort(t, addr)
		want[kind] = p
		if _, ok := findPort([]corev1.Container{*c}, intstr.FromInt32(p), corev1.ProtocolTCP); !ok {
			t.Errorf("container %s: --%s=%s, but %d is no container port", c.Name, flag, addr, p)
		}
	}
	if addr, ok := mc.flags["gossip-addr"]; ok {
		p := addrPort(t, addr)
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
			if _, ok := findPort([]corev1.Container{*c}, intstr.FromInt32(p), proto); !ok {
				t.Errorf("container %s: gossip port %d/%s is no container port", c.Name, p, proto)
			}
		}
		adv, ok := mc.flags["gossip-advertise"]
		if !ok || addrPort(t, adv) != p {
			t.Errorf("container %s: --gossip-advertise=%q should be the pod IP and the gossip port %d", c.Name, adv, p)
		}
	} else {
		t.Errorf("container %s: --gossip-addr not set: the default gossips on loopback only", c.Name)
	}
	if adv, ok := mc.flags["advertise-addr"]; ok && addrPort(t, adv) != want["grpc"] {
		t.Errorf("container %s: --advertise-addr=%s is not the gRPC port %d", c.Name, adv, want["grpc"])
	}
	if mc.path[0] == "expertnode" {
		if _, ok := mc.flags["advertise-addr"]; !ok {
			t.Errorf("container %s: an expert node needs --advertise-addr (its name in the headless Service): it would register 0.0.0.0", c.Name)
		}
	}
	probes := map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe}
	for _, name := range sortedKeys(probes) {
		pr := probes[name]
		if pr == nil {
			t.Errorf("container %s: no %s probe", c.Name, name)
			continue
		}
		port, kind := probePort(t, c, pr)
		if port != want[kind] {
			t.Errorf("container %s: %s probe on %s port %d, but moegrid serves %s on %d", c.Name, name, kind, port, kind, want[kind])
		}
		if pr.HTTPGet != nil && pr.HTTPGet.Path != "/healthz" && pr.HTTPGet.Path != "/readyz" {
			t.Errorf("container %s: %s probe path %q", c.Name, name, pr.HTTPGet.Path)
		}
		// The HTTP server speaks only TLS; the kubelet's gRPC probe
		// cannot speak mutual TLS at all.
		if pr.HTTPGet != nil && pr.HTTPGet.Scheme != corev1.URISchemeHTTPS {
			t.Errorf("container %s: %s probe scheme %q, but moegrid serves HTTPS", c.Name, name, pr.HTTPGet.Scheme)
		}
		if pr.GRPC != nil {
			t.Errorf("container %s: %s probe is a gRPC probe, which gets no client certificate through mutual TLS", c.Name, name)
		}
	}
	// Readiness is /readyz, the server-wide gRPC health status; liveness
	// must not be, since it says "not ready" while a router misses an
	// expert or a node loads.
	if c.ReadinessProbe != nil && (c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz") {
		t.Errorf("container %s: readiness should be /readyz", c.Name)
	}
	if c.LivenessProbe != nil && (c.LivenessProbe.GRPC != nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz") {
		t.Errorf("container %s: liveness should be /healthz, which does not depend on the rest of the cluster", c.Name)
	}
	if sp := c.StartupProbe; sp != nil && sp.PeriodSeconds*sp.FailureThreshold < 60 {
		t.Errorf("container %s: startup probe gives up after %ds: too soon for loading weights", c.Name, sp.PeriodSeconds*sp.FailureThreshold)
	}
}

func TestEtcd(t *testing.T) {
	o := rendered(t, targets[0])
	sts := o.statefulSet("moegrid-etcd")
	if sts == nil {
		t.Fatal("no moegrid-etcd StatefulSet")
	}
	c := sts.Spec.Template.Spec.Containers[0]
	if c.Image != "gcr.io/etcd-development/etcd:v3.7.3" {
		t.Errorf("etcd image %s: want the official image, the version of go.etcd.io/etcd/server/v3 in go.mod", c.Image)
	}
	if len(c.Command) != 1 || c.Command[0] != "/usr/local/bin/etcd" {
		t.Errorf("etcd command %v: want /usr/local/bin/etcd, where both the official image and moegrid-etcd have it", c.Command)
	}
	flags := map[string]string{}
	env := podEnv(t, o, &c)
	for _, a := range c.Args {
		k, v, _ := strings.Cut(strings.TrimPrefix(expand(t, a, env), "--"), "=")
		flags[k] = v
	}
	n := int(deref(sts.Spec.Replicas, 1))
	var members, endpoints []string
	if flags["name"] != "pod-0" || flags["initial-advertise-peer-urls"] != "https://pod-0."+sts.Spec.ServiceName+":2380" {
		t.Errorf("etcd member name %q and peer URL %q are not the pod's", flags["name"], flags["initial-advertise-peer-urls"])
	}
	for i := range n {
		pod := fmt.Sprintf("%s-%d", sts.Name, i)
		members = append(members, fmt.Sprintf("%s=https://%s.%s:2380", pod, pod, sts.Spec.ServiceName))
		endpoints = append(endpoints, fmt.Sprintf("https://%s.%s:2379", pod, sts.Spec.ServiceName))
	}
	if got := flags["initial-cluster"]; got != strings.Join(members, ",") {
		t.Errorf("--initial-cluster=%s\nwant          %s", got, strings.Join(members, ","))
	}
	shared := o.configMap(findConfigMap(t, o, "moegrid"))
	if got := shared.Data["MOEGRID_ETCD_ENDPOINTS"]; got != strings.Join(endpoints, ",") {
		t.Errorf("MOEGRID_ETCD_ENDPOINTS=%s\nwant %s", got, strings.Join(endpoints, ","))
	}
	if sts.Spec.PodManagementPolicy != "Parallel" {
		t.Error("etcd members must start together (podManagementPolicy: Parallel) to form a quorum")
	}
	for _, s := range o.services {
		if s.Name == sts.Spec.ServiceName && !s.Spec.PublishNotReadyAddresses {
			t.Error("the etcd Service must publish not-ready addresses: members resolve each other before they are ready")
		}
	}
	metrics := addrPort(t, strings.TrimPrefix(flags["listen-metrics-urls"], "http://"))
	for _, pr := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
		if p, _ := probePort(t, &c, pr); p != metrics {
			t.Errorf("etcd probe on port %d, metrics listen on %d", p, metrics)
		}
	}
	mustMount(t, c, "data", "/var/lib/etcd")
	if !strings.HasPrefix(flags["data-dir"], "/var/lib/etcd/") {
		t.Errorf("--data-dir=%s is not on the data volume", flags["data-dir"])
	}
}

// findConfigMap resolves a generated ConfigMap's name (with its hash).
func findConfigMap(t *testing.T, o *objects, base string) string {
	t.Helper()
	for _, c := range o.configMaps {
		if i := strings.LastIndex(c.Name, "-"); i > 0 && c.Name[:i] == base {
			return c.Name
		}
	}
	t.Fatalf("no ConfigMap %s-<hash>", base)
	return ""
}

func mustMount(t *testing.T, c corev1.Container, volume, path string) {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if m.Name == volume && m.MountPath == path {
			return
		}
	}
	t.Errorf("container %s does not mount %s at %s", c.Name, volume, path)
}

// TestPodSecurity checks what the "restricted" Pod Security Standard asks
// and more: read-only root filesystems, no service account token.
func TestPodSecurity(t *testing.T) {
	forEachTarget(t, func(t *testing.T, o *objects) {
		for _, ns := range o.namespaces {
			if ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
				t.Errorf("namespace %s does not enforce the restricted Pod Security Standard", ns.Name)
			}
		}
		for _, w := range o.workloads() {
			checkPodSecurity(t, w.kind+"/"+w.name, &w.template.Spec, true)
		}
	})
}

func checkPodSecurity(t *testing.T, who string, spec *corev1.PodSpec, readOnlyRoot bool) {
	t.Helper()
	psc := spec.SecurityContext
	switch {
	case psc == nil:
		t.Errorf("%s: no pod securityContext", who)
		return
	case !deref(psc.RunAsNonRoot, false):
		t.Errorf("%s: runAsNonRoot is not set", who)
	case deref(psc.RunAsUser, 0) == 0:
		t.Errorf("%s: no numeric non-root runAsUser", who)
	case psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("%s: seccomp profile is not RuntimeDefault", who)
	}
	if deref(spec.AutomountServiceAccountToken, true) {
		t.Errorf("%s: mounts a service account token it has no use for", who)
	}
	for _, c := range append(slicesCloneC(spec.InitContainers), spec.Containers...) {
		sc := c.SecurityContext
		switch {
		case sc == nil:
			t.Errorf("%s/%s: no securityContext", who, c.Name)
		case deref(sc.AllowPrivilegeEscalation, true):
			t.Errorf("%s/%s: allowPrivilegeEscalation", who, c.Name)
		case sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) > 0:
			t.Errorf("%s/%s: capabilities are not drop: [ALL]", who, c.Name)
		case readOnlyRoot && !deref(sc.ReadOnlyRootFilesystem, false):
			t.Errorf("%s/%s: root filesystem is writable", who, c.Name)
		case deref(sc.Privileged, false):
			t.Errorf("%s/%s: privileged", who, c.Name)
		}
		if strings.HasSuffix(c.Image, ":latest") || !strings.Contains(c.Image, ":") {
			t.Errorf("%s/%s: image %q has no pinned tag", who, c.Name, c.Image)
		}
		if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
			t.Errorf("%s/%s: no memory limit", who, c.Name)
		}
		if _, ok := c.Resources.Requests[corev1.ResourceCPU]; !ok {
			t.Errorf("%s/%s: no CPU request", who, c.Name)
		}
	}
}

func slicesCloneC(s []corev1.Container) []corev1.Container {
	return append([]corev1.Container(nil), s...)
}

// TestExpertNodes checks the rules that put one expert node on each
// machine, and the overlays' GPU and CPU placement.
func TestExpertNodes(t *testing.T) {
	forEachTarget(t, func(t *testing.T, o *objects) {
		sts := o.statefulSet("expert")
		if sts == nil {
			t.Fatal("no expert StatefulSet")
		}
		if r := deref(sts.Spec.Replicas, 1); r != 8 {
			t.Errorf("%d expert nodes, want 8 (one per Mixtral expert)", r)
		}
		spec := sts.Spec.Template.Spec
		if spec.Affinity == nil || spec.Affinity.PodAntiAffinity == nil ||
			len(spec.Affinity.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) != 1 ||
			spec.Affinity.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0].TopologyKey != corev1.LabelHostname {
			t.Errorf("expert nodes need required pod anti-affinity on %s", corev1.LabelHostname)
		}
		if len(spec.TopologySpreadConstraints) == 0 {
			t.Error("expert nodes have no topology spread")
		}
		c := spec.Containers[0]
		mustMount(t, c, "model", "/models")
		for _, m := range c.VolumeMounts {
			if m.Name == "model" && !m.ReadOnly {
				t.Error("the model volume is mounted writable")
			}
		}
		gpu := c.Resources.Limits["nvidia.com/gpu"]
		gpuReq := c.Resources.Requests["nvidia.com/gpu"]
		switch name := strings.TrimPrefix(t.Name(), "TestExpertNodes/"); {
		case strings.HasPrefix(name, "gpu"):
			if gpu.Value() != 1 || gpuReq.Value() != 1 {
				t.Errorf("gpu overlay: expert node GPU request %s, limit %s; want 1 and 1", gpuReq.String(), gpu.String())
			}
			if spec.NodeSelector["nvidia.com/gpu.present"] != "true" {
				t.Errorf("gpu overlay: nodeSelector %v", spec.NodeSelector)
			}
			tolerated := false
			for _, tol := range spec.Tolerations {
				tolerated = tolerated || tol.Key == "nvidia.com/gpu" && tol.Effect == corev1.TaintEffectNoSchedule
			}
			if !tolerated {
				t.Error("gpu overlay: expert nodes do not tolerate the nvidia.com/gpu taint")
			}
		default:
			if !gpu.IsZero() || !gpuReq.IsZero() {
				t.Errorf("%s: expert nodes ask for GPUs", name)
			}
		}
	})
}

// TestSizing checks the resources against Mixtral-8x7B's sizes (see the
// comments in expertnode.yaml and router.yaml).
func TestSizing(t *testing.T) {
	if mixtralExpertBytes != 11_274_289_152 {
		t.Fatalf("Mixtral expert bytes %d", mixtralExpertBytes)
	}
	forEachTarget(t, func(t *testing.T, o *objects) {
		cm := o.configMap(findConfigMap(t, o, "moegrid-expertnode"))
		capacity, err := humanize.ParseBytes(cm.Data["MOEGRID_CAPACITY"])
		if err != nil {
			t.Fatalf("MOEGRID_CAPACITY: %v", err)
		}
		if capacity < 2*mixtralExpertBytes {
			t.Errorf("capacity %s cannot hold a second expert (%s each) while a node is down",
				humanize.IBytes(capacity), humanize.IBytes(mixtralExpertBytes))
		}
		for _, w := range o.workloads() {
			for _, c := range w.template.Spec.Containers {
				req, lim := c.Resources.Requests[corev1.ResourceMemory], c.Resources.Limits[corev1.ResourceMemory]
				if w.name == "expert" {
					if min := resource.NewQuantity(int64(capacity)+2<<30, resource.BinarySI); lim.Cmp(*min) < 0 {
						t.Errorf("expert node memory limit %s < capacity %s + 2Gi of working memory", lim.String(), humanize.IBytes(capacity))
					}
				}
				if (w.name == "expert" || w.name == "moegrid-router") && req.Cmp(lim) != 0 {
					t.Errorf("%s: memory request %s != limit %s: the weights' memory should be guaranteed", w.name, req.String(), lim.String())
				}
			}
		}
	})
}

// TestJobs checks the model-filling Jobs in deploy/k8s/jobs.
func TestJobs(t *testing.T) {
	base := rendered(t, targets[0])
	var claim string
	for _, c := range base.claims {
		claim = c.Name
	}
	model := base.configMap(findConfigMap(t, base, "moegrid-expertnode")).Data["MOEGRID_MODEL"]
	files, err := filepath.Glob(filepath.Join(k8sDir(t), "jobs", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no jobs: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			o := decodeAll(t, data)
			if len(o.jobs) != 1 || len(o.all) != 1 {
				t.Fatalf("want exactly one Job, got %v", o.kinds)
			}
			j := o.jobs[0]
			if j.Namespace != "moegrid" {
				t.Errorf("namespace %q", j.Namespace)
			}
			spec := &j.Spec.Template.Spec
			checkPodSecurity(t, j.Name, spec, false)
			uses := false
			for _, v := range spec.Volumes {
				uses = uses || v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == claim
			}
			if !uses {
				t.Errorf("does not mount the model claim %s", claim)
			}
			c := &spec.Containers[0]
			mustMount(t, *c, "model", "/models")
			if isMoegrid(c.Image) {
				mc := parseMoegrid(t, base, c)
				mc.checkParses(t, c.Name)
				if got := mc.flags["out"]; got != model {
					t.Errorf("writes %s; the servers read MOEGRID_MODEL=%s", got, model)
				}
			} else if !strings.Contains(strings.Join(c.Args, "\n"), model) {
				t.Errorf("does not write %s, which the servers read", model)
			}
		})
	}
}

// TestNoSinglePointOfFailure checks what lets clients and the control plane
// ride out the loss of one pod: the router and the coordinator run at least
// two replicas spread over nodes, each under a PDB that lets one go; the
// router's rollout never takes a serving replica away first; and every
// moegrid server gets longer to exit than its own --stop-timeout, so that
// Kubernetes does not SIGKILL streams that are draining.
func TestNoSinglePointOfFailure(t *testing.T) {
	forEachTarget(t, func(t *testing.T, o *objects) {
		roles := map[string]bool{}
		for _, d := range o.deployments {
			spec := &d.Spec.Template.Spec
			for i := range spec.Containers {
				c := &spec.Containers[i]
				if !isMoegrid(c.Image) {
					continue
				}
				mc := parseMoegrid(t, o, c)
				role := strings.Join(mc.path, " ")
				if role != "router" && role != "coordinator" {
					continue
				}
				roles[role] = true
				if r := deref(d.Spec.Replicas, 1); r < 2 {
					t.Errorf("Deployment %s (%s): %d replica, want at least 2", d.Name, role, r)
				}
				if !spreadOverHosts(spec, d.Spec.Template.Labels) {
					t.Errorf("Deployment %s (%s): no anti-affinity or topology spread over kubernetes.io/hostname: both replicas may land on one node", d.Name, role)
				}
				if !hasPDB(o, d.Spec.Template.Labels) {
					t.Errorf("Deployment %s (%s): no PodDisruptionBudget", d.Name, role)
				}
				if role == "router" {
					ru := d.Spec.Strategy.RollingUpdate
					if ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
						t.Errorf("Deployment %s: a rollout may take a serving router away before its successor is ready (maxUnavailable should be 0)", d.Name)
					}
					if !hasService(o, d.Name, false) {
						t.Errorf("Deployment %s: no Service in front of the routers", d.Name)
					}
				}
			}
		}
		for _, role := range []string{"router", "coordinator"} {
			if !roles[role] {
				t.Errorf("no Deployment runs moegrid %s", role)
			}
		}
		for _, w := range o.workloads() {
			if w.kind == "Job" {
				continue
			}
			spec := &w.template.Spec
			grace := time.Duration(deref(spec.TerminationGracePeriodSeconds, 30)) * time.Second
			for i := range spec.Containers {
				c := &spec.Containers[i]
				if !isMoegrid(c.Image) {
					continue
				}
				v, ok := parseMoegrid(t, o, c).flags["stop-timeout"]
				if !ok {
					continue
				}
				stop, err := time.ParseDuration(v)
				if err != nil {
					t.Errorf("%s %s: --stop-timeout %q: %v", w.kind, w.name, v, err)
					continue
				}
				if grace < stop+5*time.Second {
					t.Errorf("%s %s: terminationGracePeriodSeconds %v leaves no margin over --stop-timeout %v: draining streams would be killed", w.kind, w.name, grace, stop)
				}
			}
		}
	})
}

// spreadOverHosts reports whether a pod spec keeps pods with the given
// labels off one node, preferred or required.
func spreadOverHosts(spec *corev1.PodSpec, podLabels map[string]string) bool {
	selects := func(sel *metav1.LabelSelector) bool {
		s, err := metav1.LabelSelectorAsSelector(sel)
		return err == nil && s.Matches(labels.Set(podLabels))
	}
	const host = "kubernetes.io/hostname"
	if a := spec.Affinity; a != nil && a.PodAntiAffinity != nil {
		for _, term := range a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
			if term.TopologyKey == host && selects(term.LabelSelector) {
				return true
			}
		}
		for _, term := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
			if term.PodAffinityTerm.TopologyKey == host && selects(term.PodAffinityTerm.LabelSelector) {
				return true
			}
		}
	}
	for _, c := range spec.TopologySpreadConstraints {
		if c.TopologyKey == host && selects(c.LabelSelector) {
			return true
		}
	}
	return false
}

// hasPDB reports whether a PodDisruptionBudget selects pods with the given
// labels.
func hasPDB(o *objects, podLabels map[string]string) bool {
	for _, pdb := range o.pdbs {
		s, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err == nil && s.Matches(labels.Set(podLabels)) {
			return true
		}
	}
	return false
}
