package cluster

import (
	"errors"
	"fmt"
	"strings"
)

// DefaultPrefix is the etcd key prefix of the cluster when none is given.
const DefaultPrefix = "/moegrid/default/"

// Schema identifies moegrid's key layout and record encoding; it is stored in
// the meta key of every cluster prefix.
const Schema = "moegrid.v1"

// maxIDLen bounds node, router and coordinator IDs: they appear in etcd keys,
// in gossip metadata (512 bytes in all) and in tables.
const maxIDLen = 128

// maxPrefixLen bounds the key prefix.
const maxPrefixLen = 256

// ErrInvalidID reports an ID that cannot be used in a key.
var ErrInvalidID = errors.New("cluster: invalid id")

// ErrInvalidPrefix reports a key prefix that cannot hold a cluster.
var ErrInvalidPrefix = errors.New("cluster: invalid prefix")

// Keys is the etcd key schema of one cluster. Every key lives under the
// cluster's prefix; two clusters never share a prefix, and a prefix never
// holds anything else (see Open):
//
//	<prefix>meta                cluster meta (Meta): schema "moegrid.v1"
//	<prefix>nodes/<id>          NodeRecord of an expert node, under its lease
//	<prefix>placement           PlacementRecord, written by the leader only
//	<prefix>election/<lease>    coordinator election (concurrency.Election)
//	<prefix>drain/<id>          DrainMark: the operator asked to drain a node
//	<prefix>load/<router-id>    LoadRecord of a router, under its lease
//
// The zero Keys is not usable; build one with NewKeys.
type Keys struct {
	prefix string
}

// NewKeys validates prefix and returns its key schema. A prefix is absolute,
// made of one or more segments of letters, digits, '.', '_' or '-', and ends
// with '/'; a missing final '/' is added ("/moegrid/prod" is
// "/moegrid/prod/").
func NewKeys(prefix string) (Keys, error) {
	p, err := normalizePrefix(prefix)
	if err != nil {
		return Keys{}, err
	}
	return Keys{prefix: p}, nil
}

func normalizePrefix(prefix string) (string, error) {
	if prefix == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalidPrefix)
	}
	if !strings.HasPrefix(prefix, "/") {
		return "", fmt.Errorf("%w %q: must start with '/'", ErrInvalidPrefix, prefix)
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	if prefix == "/" {
		return "", fmt.Errorf("%w %q: empty segment (the whole keyspace is not a cluster prefix)", ErrInvalidPrefix, prefix)
	}
	if len(prefix) > maxPrefixLen {
		return "", fmt.Errorf("%w %q: longer than %d bytes", ErrInvalidPrefix, prefix, maxPrefixLen)
	}
	segs := strings.Split(prefix[1:len(prefix)-1], "/")
	for _, s := range segs {
		if s == "" {
			return "", fmt.Errorf("%w %q: empty segment (the whole keyspace or '//' is not a cluster prefix)", ErrInvalidPrefix, prefix)
		}
		if s == "." || s == ".." {
			return "", fmt.Errorf("%w %q: segment %q", ErrInvalidPrefix, prefix, s)
		}
		for _, r := range s {
			if !idRune(r) {
				return "", fmt.Errorf("%w %q: character %q (letters, digits, '.', '_', '-' and '/' only)", ErrInvalidPrefix, prefix, r)
			}
		}
	}
	return prefix, nil
}

// ValidateID checks an ID of a node, router or coordinator: 1 to 128 letters,
// digits, '.', '_' or '-', starting with a letter or digit. IDs are unique
// within a cluster across roles: they name keys and gossip members.
func ValidateID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty", ErrInvalidID)
	}
	if len(id) > maxIDLen {
		return fmt.Errorf("%w %.20q...: longer than %d bytes", ErrInvalidID, id, maxIDLen)
	}
	for i, r := range id {
		if !idRune(r) || (i == 0 && (r == '.' || r == '_' || r == '-')) {
			return fmt.Errorf("%w %q: letters, digits, '.', '_' and '-' only, starting with a letter or digit", ErrInvalidID, id)
		}
	}
	return nil
}

func idRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
}

// Prefix returns the cluster prefix, ending with '/'.
func (k Keys) Prefix() string { return k.prefix }

// Meta returns the key of the cluster meta record.
func (k Keys) Meta() string { return k.prefix + "meta" }

// Nodes returns the prefix of the node records.
func (k Keys) Nodes() string { return k.prefix + "nodes/" }

// Node returns the key of node id's record.
func (k Keys) Node(id string) string { return k.Nodes() + id }

// Placement returns the key of the placement record.
func (k Keys) Placement() string { return k.prefix + "placement" }

// Election returns the election prefix for concurrency.NewElection, which
// appends the '/' itself.
func (k Keys) Election() string { return k.prefix + "election" }

// Drains returns the prefix of the drain marks.
func (k Keys) Drains() string { return k.prefix + "drain/" }

// Drain returns the key of node id's drain mark.
func (k Keys) Drain(id string) string { return k.Drains() + id }

// Loads returns the prefix of the routers' load records.
func (k Keys) Loads() string { return k.prefix + "load/" }

// Load returns the key of router id's load record.
func (k Keys) Load(routerID string) string { return k.Loads() + routerID }

// kind classifies a key under the prefix: which record it holds and the ID in
// its name, or kindForeign for a key moegrid never writes.
func (k Keys) kind(key string) (keyKind, string) {
	if !strings.HasPrefix(key, k.prefix) {
		return kindForeign, ""
	}
	rest := key[len(k.prefix):]
	switch {
	case rest == "meta":
		return kindMeta, ""
	case rest == "placement":
		return kindPlacement, ""
	case strings.HasPrefix(rest, "election/"):
		return kindElection, strings.TrimPrefix(rest, "election/")
	}
	for _, c := range []struct {
		dir  string
		kind keyKind
	}{{"nodes/", kindNode}, {"drain/", kindDrain}, {"load/", kindLoad}} {
		if id, ok := strings.CutPrefix(rest, c.dir); ok {
			if ValidateID(id) != nil {
				return kindForeign, id
			}
			return c.kind, id
		}
	}
	return kindForeign, ""
}

type keyKind int

const (
	kindForeign keyKind = iota
	kindMeta
	kindNode
	kindPlacement
	kindElection
	kindDrain
	kindLoad
)
