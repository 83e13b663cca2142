package mtls

import (
	"strings"
	"testing"
)

func TestSecurityValidate(t *testing.T) {
	full := Security{Files: Files{Cert: "a.crt", Key: "a.key", CA: "ca.crt"}, GossipKeyFile: "gossip.key"}
	for _, tc := range []struct {
		name       string
		sec        Security
		needGossip bool
		err        string
	}{
		{"complete", full, true, ""},
		{"insecure", Security{Insecure: true}, true, ""},
		{"nothing", Security{}, true, "set --tls-cert, --tls-key, --tls-ca, --gossip-key-file (make them with `moegrid certs all`), or pass --insecure"},
		{"no gossip needed", Security{Files: full.Files}, false, ""},
		{"key missing", Security{Files: Files{Cert: "a.crt", CA: "ca.crt"}}, false, "set --tls-key"},
		{"insecure with files", Security{Insecure: true, Files: Files{Cert: "a.crt"}, GossipKeyFile: "g"}, true, "--insecure excludes --gossip-key-file, --tls-cert"},
		{"username alone", Security{Files: full.Files, EtcdUsername: "moegrid"}, false, "--etcd-username and --etcd-password-file go together"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.sec.Validate(tc.needGossip)
			if tc.err == "" && err != nil {
				t.Errorf("Validate: %v", err)
			}
			if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("Validate: %v, want it to contain %q", err, tc.err)
			}
		})
	}
}

func TestSecurityEtcdFiles(t *testing.T) {
	s := Security{Files: Files{Cert: "a.crt", Key: "a.key", CA: "ca.crt"}, Etcd: Files{CA: "etcd-ca.crt"}}
	if got, want := s.EtcdFiles(), (Files{Cert: "a.crt", Key: "a.key", CA: "etcd-ca.crt"}); got != want {
		t.Errorf("EtcdFiles = %+v, want %+v", got, want)
	}
}
