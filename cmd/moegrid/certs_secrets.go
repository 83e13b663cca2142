package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/moegrid/moegrid/internal/pki"
)

// kubeComponent is one certificate of the Kubernetes deployment
// (deploy/k8s): the Secret its pods mount and the names they are reached
// under. components/cert-manager issues the same certificates; a test in
// deploy/k8stest holds the two to each other.
type kubeComponent struct {
	secret string // the kubernetes.io/tls Secret
	id     pki.Identity
	// service is the Service the holder serves behind; empty for a role
	// that only dials.
	service string
	// headless: peers dial each pod by its name in the headless Service
	// (expert-3.expert.moegrid.svc), which a wildcard covers.
	headless bool
}

var kubeComponents = []kubeComponent{
	{"moegrid-router-tls", pki.Identity{Role: pki.RoleRouter, Name: "moegrid-router"}, "moegrid-router", false},
	{"moegrid-expertnode-tls", pki.Identity{Role: pki.RoleExpertNode, Name: "expert"}, "expert", true},
	{"moegrid-coordinator-tls", pki.Identity{Role: pki.RoleCoordinator, Name: "moegrid-coordinator"}, "moegrid-coordinator", false},
	// etcd admits as a peer only the common name moegrid-etcd
	// (--peer-cert-allowed-cn), which pki takes from the name.
	{"moegrid-etcd-tls", pki.Identity{Role: pki.RoleEtcd, Name: "moegrid-etcd"}, "moegrid-etcd", true},
	{"moegrid-admin-tls", pki.Identity{Role: pki.RoleAdmin, Name: "admin"}, "", false},
}

// gossipSecret is the Secret holding the memberlist keyring, key gossipKey.
const (
	gossipSecret = "moegrid-gossip"
	gossipKey    = "gossip.key"
)

// hosts are the names a serving component's certificate carries in
// namespace ns: its Service by every name a pod may use for it, the pods of
// a headless Service by wildcard, and loopback for `kubectl port-forward`
// and commands run inside the pod.
func (c kubeComponent) hosts(ns, domain string) []string {
	if c.service == "" {
		return nil
	}
	names := []string{c.service, c.service + "." + ns, c.service + "." + ns + ".svc", c.service + "." + ns + ".svc." + domain}
	var hosts []string
	hosts = append(hosts, names...)
	if c.headless {
		for _, n := range names {
			hosts = append(hosts, "*."+n)
		}
	}
	return append(hosts, "localhost", "127.0.0.1")
}

// secretManifest is a v1 Secret as kubectl reads it.
type secretManifest struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	Type string            `json:"type"`
	Data map[string][]byte `json:"data"`
}

func newSecretManifest(name, ns, typ string, data map[string][]byte) secretManifest {
	s := secretManifest{APIVersion: "v1", Kind: "Secret", Type: typ, Data: data}
	s.Metadata.Name, s.Metadata.Namespace = name, ns
	s.Metadata.Labels = map[string]string{"app.kubernetes.io/name": "moegrid", "app.kubernetes.io/part-of": "moegrid"}
	return s
}

// dns1123Label is a Kubernetes namespace name.
var dns1123Label = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

func newCertsSecretsCmd() *cobra.Command {
	var (
		dir, namespace, domain string
		days, caDays           int
	)
	cmd := &cobra.Command{
		Use:   "secrets --dir DIR [--namespace NS]",
		Short: "Print the Kubernetes Secrets of deploy/k8s: certificates from DIR's CA and the gossip key",
		Long: `Issue the certificates the Kubernetes deployment (deploy/k8s) mounts and print
them, with DIR's gossip key, as Secret manifests for kubectl apply:

  moegrid-router-tls        spiffe://moegrid/router/moegrid-router
  moegrid-expertnode-tls    spiffe://moegrid/expertnode/expert
  moegrid-coordinator-tls   spiffe://moegrid/coordinator/moegrid-coordinator
  moegrid-etcd-tls          spiffe://moegrid/etcd/moegrid-etcd (server and peer)
  moegrid-admin-tls         spiffe://moegrid/admin/admin
  moegrid-gossip            gossip.key

The certificate Secrets are of type kubernetes.io/tls with ca.crt, as
cert-manager writes them, and name the Services of namespace NS (and, for
the expert nodes and etcd, their pods). DIR gets a CA and gossip key if it
has none; it keeps the CA key, which never goes into the cluster. Running
the command again issues fresh certificates from the same CA: apply them
and the pods pick them up without a restart.

  moegrid certs secrets --dir ./certs --namespace moegrid | kubectl apply -f -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := needDir(dir); err != nil {
				return err
			}
			if !dns1123Label.MatchString(namespace) {
				return fmt.Errorf("--namespace %q: want a Kubernetes namespace name (lower-case letters, digits and '-')", namespace)
			}
			if !validDomain(domain) {
				return fmt.Errorf("--cluster-domain %q: want a DNS name like cluster.local", domain)
			}
			if err := needDays("days", days); err != nil {
				return err
			}
			if err := needDays("ca-days", caDays); err != nil {
				return err
			}
			d := pki.Dir(dir)
			ca, err := d.LoadCA()
			if errors.Is(err, pki.ErrNoCA) {
				if ca, err = d.Init(time.Duration(caDays) * day); err == nil {
					printCA(cmd.ErrOrStderr(), d, ca)
				}
			}
			if err != nil {
				return err
			}
			caPEM, err := os.ReadFile(d.CACert())
			if err != nil {
				return fmt.Errorf("CA certificate: %w", err)
			}
			gossip, err := readKeyring(d.GossipKey())
			if err != nil {
				return err
			}
			var secrets []secretManifest
			for _, c := range kubeComponents {
				kp, err := ca.Issue(pki.LeafRequest{Identity: c.id, Hosts: c.hosts(namespace, domain), Validity: time.Duration(days) * day})
				if err != nil {
					return err
				}
				secrets = append(secrets, newSecretManifest(c.secret, namespace, "kubernetes.io/tls", map[string][]byte{
					"tls.crt": kp.CertPEM, "tls.key": kp.KeyPEM, "ca.crt": caPEM,
				}))
			}
			secrets = append(secrets, newSecretManifest(gossipSecret, namespace, "Opaque", map[string][]byte{gossipKey: gossip}))
			return writeManifests(cmd.OutOrStdout(), secrets)
		},
	}
	f := cmd.Flags()
	dirFlag(f, &dir)
	f.StringVar(&namespace, "namespace", "moegrid", "namespace of the Secrets and of the Services the certificates name")
	f.StringVar(&domain, "cluster-domain", "cluster.local", "the cluster's DNS domain")
	f.IntVar(&days, "days", 365, "days the certificates are valid")
	f.IntVar(&caDays, "ca-days", 3650, "days a new CA is valid")
	return cmd
}

// validDomain reports whether name is a DNS name of lower-case labels.
func validDomain(name string) bool {
	for _, label := range strings.Split(name, ".") {
		if !dns1123Label.MatchString(label) {
			return false
		}
	}
	return len(name) <= 253
}

// readKeyring reads a gossip key file as it goes into the Secret, whole:
// one base64 key per line, as many as a rotation has in flight, each of
// pki.GossipKeySize bytes.
func readKeyring(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	n := 0
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		k, err := base64.StdEncoding.DecodeString(line)
		if err != nil || len(k) != pki.GossipKeySize {
			return nil, fmt.Errorf("gossip key %s line %d: want base64 of %d bytes", path, i+1, pki.GossipKeySize)
		}
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("gossip key %s: no key", path)
	}
	return b, nil
}

func writeManifests(w io.Writer, secrets []secretManifest) error {
	for i, s := range secrets {
		b, err := yaml.Marshal(s)
		if err != nil {
			return fmt.Errorf("secret %s: %w", s.Metadata.Name, err)
		}
		if i > 0 {
			if _, err := io.WriteString(w, "---\n"); err != nil {
				return err
			}
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}
