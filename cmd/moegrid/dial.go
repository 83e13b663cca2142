package main

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/moegrid/moegrid/internal/mtls"
	"github.com/moegrid/moegrid/internal/pki"
	"github.com/moegrid/moegrid/internal/up"
)

// dialFlags are the TLS flags of the commands that dial a router or a
// coordinator: --tls-cert, --tls-key, --tls-ca and --insecure.
type dialFlags struct {
	files    mtls.Files
	insecure bool
}

func (d *dialFlags) register(f *pflag.FlagSet) {
	registerIdentityFlags(f, &d.files, &d.insecure)
}

// source returns the certificate to dial with: nil (plaintext) with
// --insecure; the --tls-* files when given; with neither, those of the
// running `moegrid up` (its CA and admin certificate), or nil if that runs
// insecure.
func (d *dialFlags) source() (*mtls.Source, error) {
	set := d.files != (mtls.Files{})
	switch {
	case d.insecure && set:
		return nil, errors.New("--insecure excludes --tls-cert, --tls-key and --tls-ca")
	case d.insecure:
		return nil, nil
	}
	files := d.files
	if !set {
		st, err := readUpState()
		if err != nil {
			return nil, fmt.Errorf("no --tls-cert, --tls-key, --tls-ca given and no `moegrid up` to take them from (%w); give them, or --insecure for a plaintext cluster", err)
		}
		if st.Insecure {
			return nil, nil
		}
		if st.TLSDir == "" {
			return nil, errors.New("the running `moegrid up` names no TLS directory; give --tls-cert, --tls-key, --tls-ca or --insecure")
		}
		files = mtls.FilesFor(pki.Dir(st.TLSDir), up.AdminCert)
	}
	return mtls.NewSource(mtls.SourceConfig{Files: files})
}

// creds returns the transport credentials for dialling addr (host:port).
func (d *dialFlags) creds(addr string) (credentials.TransportCredentials, error) {
	src, err := d.source()
	if err != nil {
		return nil, err
	}
	return mtls.DialCreds(src, addr), nil
}

// httpTLS returns the TLS of an HTTP client of the server at host, nil for
// plaintext.
func (d *dialFlags) httpTLS(host string) (*tls.Config, error) {
	src, err := d.source()
	if err != nil || src == nil {
		return nil, err
	}
	return mtls.ClientTLS(src, host), nil
}

// dial connects to addr with the credentials the flags give.
func (d *dialFlags) dial(addr string) (*grpc.ClientConn, error) {
	creds, err := d.creds(addr)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
}
