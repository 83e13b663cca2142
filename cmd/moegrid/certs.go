package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/moegrid/moegrid/internal/pki"
)

// defaultHosts are the names a serving certificate carries when --hosts is
// not given: enough for a cluster on one machine.
var defaultHosts = []string{"localhost", "127.0.0.1", "::1"}

const day = 24 * time.Hour

func newCertsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Make the cluster CA, the gossip key and the components' certificates",
		Long: `Make the certificates a moegrid cluster authenticates with. A certificate
directory holds:

  ca.crt       the cluster CA, which every component trusts
  ca.key       its key (0600); keep it off the cluster's machines if you can
  NAME.crt     a component's certificate
  NAME.key     its key (0600)
  gossip.key   the memberlist encryption key, base64 of 32 bytes (0600)

Every certificate names its holder as spiffe://moegrid/ROLE/NAME, and
servers authorize calls by the role: router, expertnode, coordinator, etcd,
admin (operators, the CLI) or client (generation clients). Roles that serve
(all but admin and client) carry the host names and addresses they are
reached at, and may also be used as clients. Files are replaced atomically,
so running components pick up a reissued certificate on their own.

Examples:
  moegrid certs all --dir ./certs
  moegrid certs init --dir ./certs
  moegrid certs issue --dir ./certs --role expertnode --name expert-3 \
      --hosts expert-3.moegrid.svc,10.0.0.13
  moegrid certs issue --dir ./certs --role client --name alice --days 30
  moegrid certs secrets --dir ./certs --namespace moegrid | kubectl apply -f -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newCertsInitCmd(), newCertsIssueCmd(), newCertsAllCmd(), newCertsSecretsCmd())
	return cmd
}

func dirFlag(f *pflag.FlagSet, dir *string) {
	f.StringVar(dir, "dir", "", "certificate directory (required)")
}

func needDir(dir string) error {
	if dir == "" {
		return errors.New("--dir is required: the certificate directory")
	}
	return nil
}

// needDays checks a validity flag (--days, --ca-days).
func needDays(flag string, days int) error {
	if days <= 0 {
		return fmt.Errorf("--%s %d: want a positive number of days", flag, days)
	}
	return nil
}

func newCertsInitCmd() *cobra.Command {
	var (
		dir    string
		caDays int
	)
	cmd := &cobra.Command{
		Use:   "init --dir DIR",
		Short: "Make a new cluster CA and gossip key in DIR",
		Long: `Make a new cluster CA (ECDSA P-256) and gossip key in DIR, creating it with
mode 0700. A directory that already has a CA is refused: a new CA would
leave every certificate the old one signed untrusted.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := needDir(dir); err != nil {
				return err
			}
			if err := needDays("ca-days", caDays); err != nil {
				return err
			}
			d := pki.Dir(dir)
			ca, err := d.Init(time.Duration(caDays) * day)
			if err != nil {
				return err
			}
			printCA(cmd.OutOrStdout(), d, ca)
			return nil
		},
	}
	dirFlag(cmd.Flags(), &dir)
	cmd.Flags().IntVar(&caDays, "ca-days", 3650, "days the CA is valid")
	return cmd
}

func newCertsIssueCmd() *cobra.Command {
	var (
		dir, role, name string
		hosts           []string
		days            int
	)
	cmd := &cobra.Command{
		Use:   "issue --dir DIR --role ROLE [--name NAME] [--hosts H,...] [--days N]",
		Short: "Issue a certificate for one component from DIR's CA",
		Long: `Issue a certificate and key for one component, signed by DIR's CA, as
DIR/NAME.crt and DIR/NAME.key, replacing an earlier pair of that name.
ROLE is router, expertnode, coordinator, etcd, admin or client; NAME
defaults to the role. Serving roles carry --hosts (DNS names and IP
addresses; default localhost,127.0.0.1,::1); admin and client carry none.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := needDir(dir); err != nil {
				return err
			}
			if role == "" {
				return errors.New("--role is required: router, expertnode, coordinator, etcd, admin or client")
			}
			r, err := pki.ParseRole(role)
			if err != nil {
				return fmt.Errorf("--role: %w", err)
			}
			if name == "" {
				name = role
			}
			if !cmd.Flags().Changed("hosts") && r.Serves() {
				hosts = defaultHosts
			}
			d := pki.Dir(dir)
			ca, err := d.LoadCA()
			if err != nil {
				return err
			}
			return issue(cmd.OutOrStdout(), d, ca, pki.Identity{Role: r, Name: name}, hosts, days)
		},
	}
	f := cmd.Flags()
	dirFlag(f, &dir)
	f.StringVar(&role, "role", "", "role: router, expertnode, coordinator, etcd, admin or client (required)")
	f.StringVar(&name, "name", "", "the holder's name, e.g. expert-3; also the file name (default: the role)")
	f.StringSliceVar(&hosts, "hosts", nil, "DNS names and IP addresses the holder serves under, comma separated (default localhost,127.0.0.1,::1 for serving roles)")
	f.IntVar(&days, "days", 365, "days the certificate is valid")
	return cmd
}

func newCertsAllCmd() *cobra.Command {
	var (
		dir          string
		hosts        []string
		days, caDays int
	)
	cmd := &cobra.Command{
		Use:   "all --dir DIR [--hosts H,...]",
		Short: "Make everything a local cluster needs: CA, gossip key and one certificate per role",
		Long: `Make the CA and gossip key if DIR has none, then issue one certificate per
role, each named after its role: router, expertnode, coordinator, etcd,
admin and client. The serving ones carry --hosts. This is what a cluster
on one machine (moegrid up) needs; a cluster across machines issues one
certificate per component with "moegrid certs issue".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := needDir(dir); err != nil {
				return err
			}
			if err := needDays("ca-days", caDays); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			d := pki.Dir(dir)
			ca, err := d.LoadCA()
			if errors.Is(err, pki.ErrNoCA) {
				if ca, err = d.Init(time.Duration(caDays) * day); err == nil {
					printCA(out, d, ca)
				}
			}
			if err != nil {
				return err
			}
			for _, r := range pki.Roles() {
				var h []string
				if r.Serves() {
					h = hosts
				}
				if err := issue(out, d, ca, pki.Identity{Role: r, Name: string(r)}, h, days); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	dirFlag(f, &dir)
	f.StringSliceVar(&hosts, "hosts", defaultHosts, "DNS names and IP addresses of the serving certificates, comma separated")
	f.IntVar(&days, "days", 365, "days the certificates are valid")
	f.IntVar(&caDays, "ca-days", 3650, "days a new CA is valid")
	return cmd
}

func issue(out io.Writer, d pki.Dir, ca *pki.CA, id pki.Identity, hosts []string, days int) error {
	if err := needDays("days", days); err != nil {
		return err
	}
	kp, err := ca.Issue(pki.LeafRequest{Identity: id, Hosts: hosts, Validity: time.Duration(days) * day})
	if err != nil {
		return err
	}
	if err := d.WriteKeyPair(id.Name, kp); err != nil {
		return err
	}
	fmt.Fprintf(out, "%s  %s  until %s  %s %s", id.Name, id,
		kp.Cert.NotAfter.UTC().Format(time.DateOnly), d.Cert(id.Name), d.Key(id.Name))
	if len(hosts) > 0 {
		fmt.Fprintf(out, "  hosts %s", strings.Join(hosts, ","))
	}
	fmt.Fprintln(out)
	return nil
}

func printCA(out io.Writer, d pki.Dir, ca *pki.CA) {
	fmt.Fprintf(out, "ca  %s  until %s  %s %s\ngossip  %s\n", ca.Cert.Subject.CommonName,
		ca.Cert.NotAfter.UTC().Format(time.DateOnly), d.CACert(), d.CAKey(), d.GossipKey())
}
