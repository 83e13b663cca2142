package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// ServerTLS is the configuration of a server that requires a client
// certificate signed by one of the source's CAs, with TLS 1.2 or later (1.3
// when both sides have it, as Go's do). Each handshake takes the source's
// certificate and CA pool of that moment, so a reload, CA rotation
// included, applies to the next connection.
func ServerTLS(src *Source) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return src.serverConfig(), nil
		},
	}
}

// HTTPServerTLS is ServerTLS with the client certificate optional: a
// client that sends one must chain it to the source's CAs (and
// IdentityFromTLS then names it), one that sends none still gets in. It
// is for HTTP servers whose probes and API clients carry no certificate.
func HTTPServerTLS(src *Source) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return src.httpServerConfig(), nil
		},
	}
}

// ClientTLS is the configuration of a client that presents the source's
// certificate and accepts a server whose certificate chains to one of the
// source's CAs and names serverName (a host name or IP address). With
// serverName empty, the name the handshake was started with is used, as
// gRPC sets it from the target; an IP target then needs serverName.
func ClientTLS(src *Source, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: serverName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return src.Certificate(), nil
		},
		// tls.Config has no per-handshake hook for the roots a client
		// trusts, so the standard verification is replaced by the same
		// verification against the source's current pool, in
		// VerifyConnection, which runs on every handshake.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyServer(cs, src.CAPool(), serverName)
		},
	}
}

func verifyServer(cs tls.ConnectionState, roots *x509.CertPool, serverName string) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("mtls: server sent no certificate")
	}
	if serverName == "" {
		serverName = cs.ServerName
	}
	if serverName == "" {
		return errors.New("mtls: no server name to verify the server's certificate against; give ClientTLS one")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		DNSName:       serverName,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("mtls: server certificate: %w", err)
	}
	return nil
}
