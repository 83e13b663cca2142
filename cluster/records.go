package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/moegrid/moegrid/placement"
)

// maxRecordBytes bounds every record value read from etcd before it is
// decoded. etcd's own request limit is 1.5 MiB; moegrid's records are a few
// KiB.
const maxRecordBytes = 1 << 20

// maxFingerprintLen bounds a model fingerprint.
const maxFingerprintLen = 256

// ErrMalformed reports a record in etcd that does not decode or validate.
var ErrMalformed = errors.New("cluster: malformed record")

// NodeState is the lifecycle state an expert node reports in its record.
type NodeState string

// Node states, in lifecycle order.
const (
	// StateJoining: registered, not yet serving every shard the placement
	// assigns it (loading, or waiting for its first placement).
	StateJoining NodeState = "joining"
	// StateReady: serving the shards in Loaded.
	StateReady NodeState = "ready"
	// StateDraining: leaving; the coordinator moves its shards elsewhere and
	// the router sends it no new work. A drain mark in etcd has the same
	// effect (see DrainMark).
	StateDraining NodeState = "draining"
)

// Valid reports whether s is one of the node states.
func (s NodeState) Valid() bool {
	switch s {
	case StateJoining, StateReady, StateDraining:
		return true
	}
	return false
}

// Device names the accelerator (or CPU) that holds a node's weights.
type Device struct {
	// Kind is the device class, e.g. "cpu", "cuda", "metal".
	Kind string `json:"kind"`
	// Name is the model of the device, e.g. "NVIDIA H100 80GB HBM3".
	Name string `json:"name,omitempty"`
}

// String renders the device as "kind" or "kind (name)".
func (d Device) String() string {
	if d.Name == "" {
		return d.Kind
	}
	return d.Kind + " (" + d.Name + ")"
}

// ModelInfo identifies the checkpoint a process serves. Processes whose
// fingerprints differ are never mixed in one placement: a router must not
// send activations of one checkpoint to experts of another.
type ModelInfo struct {
	// Shape is what placement needs: experts, layers, bytes per (expert, layer).
	Shape placement.Model `json:"shape"`
	// Fingerprint identifies the weights, e.g. a hash of config.json and the
	// safetensors headers. Opaque; compared for equality only.
	Fingerprint string `json:"fingerprint"`
}

// Validate checks the shape and the fingerprint.
func (m ModelInfo) Validate() error {
	if m.Fingerprint == "" {
		return errors.New("model fingerprint is empty")
	}
	if len(m.Fingerprint) > maxFingerprintLen {
		return fmt.Errorf("model fingerprint longer than %d bytes", maxFingerprintLen)
	}
	return validateShape(m.Shape)
}

func validateShape(m placement.Model) error {
	if m.Experts <= 0 || m.Layers <= 0 || m.BytesPerExpertLayer <= 0 {
		return fmt.Errorf("model shape %d experts × %d layers × %d bytes: every figure must be positive",
			m.Experts, m.Layers, m.BytesPerExpertLayer)
	}
	return nil
}

// NodeLoad is the work an expert node reports: counters since the node
// started and a recent rate.
type NodeLoad struct {
	// ForwardCallsTotal counts Expert.Forward calls served.
	ForwardCallsTotal uint64 `json:"forward_calls_total"`
	// RowsTotal counts activation rows (tokens × experts) computed.
	RowsTotal uint64 `json:"rows_total"`
	// Inflight is the number of Forward calls being served now.
	Inflight uint32 `json:"inflight"`
	// RowsPerSecond is a recent rate of rows, smoothed by the node.
	RowsPerSecond float64 `json:"rows_per_second"`
}

func (l NodeLoad) validate() error {
	if math.IsNaN(l.RowsPerSecond) || math.IsInf(l.RowsPerSecond, 0) || l.RowsPerSecond < 0 {
		return fmt.Errorf("load rows_per_second %v: must be finite and non-negative", l.RowsPerSecond)
	}
	return nil
}

// NodeRecord is an expert node's entry in etcd, at Keys.Node(ID), bound to
// the node's lease: the node is a member of the cluster exactly as long as
// this record exists. The node writes it (Register, Registration.Update);
// everyone else reads it.
type NodeRecord struct {
	// ID names the node; unique in the cluster.
	ID string `json:"id"`
	// GRPCAddr is where the node serves moegrid.v1.Expert (host:port).
	GRPCAddr string `json:"grpc_addr"`
	// GossipAddr is the node's memberlist address (host:port); empty when
	// the node does not gossip.
	GossipAddr string `json:"gossip_addr,omitempty"`
	// HTTPAddr is where the node serves /metrics, /healthz and /readyz.
	HTTPAddr string `json:"http_addr,omitempty"`
	// State is the node's lifecycle state.
	State NodeState `json:"state"`
	// CapacityBytes is the memory the node offers for expert weights, bytes.
	CapacityBytes int64 `json:"capacity_bytes"`
	// Device is where the weights live.
	Device Device `json:"device"`
	// Model is the checkpoint the node serves.
	Model ModelInfo `json:"model"`
	// Loaded lists the shards whose weights are loaded and served now.
	Loaded []placement.Shard `json:"loaded,omitempty"`
	// Load is the node's work so far.
	Load NodeLoad `json:"load"`
	// Started is when the node process started; it tells one process of a
	// node from the next (see DrainMark). Register sets it when zero.
	Started time.Time `json:"started"`
	// Heartbeat is when the node last wrote this record; Registration sets
	// it on every write.
	Heartbeat time.Time `json:"heartbeat"`
	// LoadError is set while the node fails to load the shards the
	// placement assigns it, and cleared by the load that succeeds.
	LoadError *LoadError `json:"load_error,omitempty"`
	// Insecure says the node runs without TLS (--insecure): plaintext
	// gRPC and gossip, no identity checks.
	Insecure bool `json:"insecure,omitempty"`
}

// LoadError is an expert node's last failed attempt to load its shards.
type LoadError struct {
	// Message is the error, at most MaxLoadErrorBytes.
	Message string `json:"message"`
	// Time is when the attempt failed.
	Time time.Time `json:"time"`
	// Attempts counts the failed attempts since the last load that
	// succeeded.
	Attempts int `json:"attempts"`
}

// TruncateUTF8 cuts s to at most n bytes without splitting a character, so
// that an error text fits a record's bound (MaxLoadErrorBytes,
// MaxVerdictErrBytes).
func TruncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// MaxLoadErrorBytes bounds LoadError.Message, which every reader of the
// node records fetches.
const MaxLoadErrorBytes = 1024

func (e *LoadError) validate() error {
	switch {
	case e.Message == "" || len(e.Message) > MaxLoadErrorBytes:
		return fmt.Errorf("load_error message: %d bytes, want 1 to %d", len(e.Message), MaxLoadErrorBytes)
	case e.Time.IsZero():
		return errors.New("load_error time is zero")
	case e.Attempts < 1:
		return fmt.Errorf("load_error attempts %d: must be at least 1", e.Attempts)
	}
	return nil
}

// Validate checks every field a reader relies on.
func (r *NodeRecord) Validate() error {
	if err := ValidateID(r.ID); err != nil {
		return err
	}
	if err := validateAddr("grpc_addr", r.GRPCAddr, true); err != nil {
		return err
	}
	if err := validateAddr("gossip_addr", r.GossipAddr, false); err != nil {
		return err
	}
	if err := validateAddr("http_addr", r.HTTPAddr, false); err != nil {
		return err
	}
	if !r.State.Valid() {
		return fmt.Errorf("state %q: want joining, ready or draining", r.State)
	}
	if r.CapacityBytes <= 0 {
		return fmt.Errorf("capacity_bytes %d: must be positive", r.CapacityBytes)
	}
	if r.Device.Kind == "" {
		return errors.New("device kind is empty")
	}
	if r.Started.IsZero() {
		return errors.New("started is zero")
	}
	if err := r.Model.Validate(); err != nil {
		return err
	}
	for _, s := range r.Loaded {
		if err := validateShard(s, r.Model.Shape); err != nil {
			return fmt.Errorf("loaded: %w", err)
		}
	}
	if r.LoadError != nil {
		if err := r.LoadError.validate(); err != nil {
			return err
		}
	}
	return r.Load.validate()
}

// Holds reports whether the node reports shard s (or a shard containing it)
// loaded.
func (r *NodeRecord) Holds(s placement.Shard) bool {
	for _, l := range r.Loaded {
		if l.Expert == s.Expert && l.First <= s.First && s.End <= l.End {
			return true
		}
	}
	return false
}

func validateShard(s placement.Shard, m placement.Model) error {
	if s.Expert < 0 || s.Expert >= m.Experts {
		return fmt.Errorf("shard expert %d: model has %d experts", s.Expert, m.Experts)
	}
	if s.First < 0 || s.First >= s.End || s.End > m.Layers {
		return fmt.Errorf("shard of expert %d layers [%d,%d): model has %d layers", s.Expert, s.First, s.End, m.Layers)
	}
	return nil
}

func validateAddr(field, addr string, required bool) error {
	if addr == "" {
		if required {
			return fmt.Errorf("%s is empty", field)
		}
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q: %w", field, addr, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return fmt.Errorf("%s %q: port must be 1-65535", field, addr)
	}
	return nil
}

// PlacementRecord is the value of Keys.Placement: the placement the leader
// computed last, with what it was computed from. Its JSON is the
// placement.Placement's fields (version, model, assignments) plus those
// below.
//
// Version 0 means no placement yet; such a record may still carry Error.
type PlacementRecord struct {
	placement.Placement
	// Fingerprint is the model checkpoint the placement is for; only nodes
	// serving it are placed.
	Fingerprint string `json:"fingerprint,omitempty"`
	// Load is the routing load per expert (tokens per second, summed over the
	// routers) that the placement was computed with. The leader keeps it
	// until the load shifts enough to be worth moving shards for.
	Load []float64 `json:"load,omitempty"`
	// Error is set while no complete placement is possible, e.g.
	// "insufficient capacity: need 93.4 GB, have 80.0 GB". The placement
	// fields then still hold the last complete placement.
	Error string `json:"error,omitempty"`
	// Leader is the coordinator replica that wrote the record.
	Leader string `json:"leader,omitempty"`
	// Written is when the record was written.
	Written time.Time `json:"written"`
}

// Validate checks the record: a version-0 record has no assignments; any
// other must be a valid placement of its model.
func (r *PlacementRecord) Validate() error {
	if r.Version < 0 {
		return fmt.Errorf("version %d is negative", r.Version)
	}
	if r.Version == 0 {
		if len(r.Assignments) > 0 {
			return errors.New("version 0 with assignments")
		}
		return nil
	}
	if err := validateShape(r.Model); err != nil {
		return err
	}
	if err := r.Placement.Validate(r.Model); err != nil {
		return err
	}
	for _, a := range r.Assignments {
		for _, id := range a.Nodes {
			if err := ValidateID(id); err != nil {
				return fmt.Errorf("assignment of expert %d: %w", a.Shard.Expert, err)
			}
		}
	}
	if r.Load != nil && len(r.Load) != r.Model.Experts {
		return fmt.Errorf("load has %d entries for %d experts", len(r.Load), r.Model.Experts)
	}
	for _, v := range r.Load {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			return fmt.Errorf("load %v: must be finite and non-negative", v)
		}
	}
	return nil
}

// DrainMark is the value of Keys.Drain(id): an operator asked the cluster to
// drain the node. It applies to one process of the node, the one started at
// NodeStarted: it survives the node re-registering after a lost lease, but a
// restarted node starts undrained, and the leader deletes marks whose process
// is gone.
type DrainMark struct {
	// NodeID is the drained node.
	NodeID string `json:"node_id"`
	// NodeStarted is the Started time of the drained node's record.
	NodeStarted time.Time `json:"node_started"`
	// Requested is when the drain was asked for.
	Requested time.Time `json:"requested"`

	// modRevision is the mark's etcd ModRevision (set when read).
	modRevision int64
}

// Validate checks the mark.
func (d *DrainMark) Validate() error {
	if err := ValidateID(d.NodeID); err != nil {
		return err
	}
	if d.NodeStarted.IsZero() {
		return errors.New("node_started is zero")
	}
	return nil
}

// Current reports whether the mark applies to the node process of rec.
func (d *DrainMark) Current(rec NodeRecord) bool {
	return d.NodeID == rec.ID && d.NodeStarted.Equal(rec.Started)
}

// LoadRecord is the value of Keys.Load(RouterID), bound to the router's
// lease: how many tokens per second the router's gates send to each expert.
// The leader sums the records of routers that serve the placed model and
// gives replicas to the hottest experts first.
type LoadRecord struct {
	// RouterID names the router.
	RouterID string `json:"router_id"`
	// Fingerprint is the model checkpoint the router serves.
	Fingerprint string `json:"fingerprint"`
	// TokensPerSecond[e] is the recent rate of tokens whose top-k includes
	// expert e, smoothed by the router.
	TokensPerSecond []float64 `json:"tokens_per_second"`
	// Unhealthy lists the expert nodes whose calls the router sees failing,
	// by node ID, at most MaxUnhealthyNodes; nodes it trusts are absent.
	Unhealthy []NodeVerdict `json:"unhealthy,omitempty"`
	// Updated is when the router last wrote the record; set by LoadReporter.
	Updated time.Time `json:"updated"`
}

// A router's verdict on an expert node whose calls fail (NodeVerdict.State).
const (
	// VerdictSuspect: recent calls failed, but not enough in a row to eject.
	VerdictSuspect = "suspect"
	// VerdictEjected: the router skips the node where another holder
	// exists, until a probe call succeeds.
	VerdictEjected = "ejected"
)

// Bounds on a LoadRecord's Unhealthy list, which every status read carries.
const (
	MaxUnhealthyNodes  = 256
	MaxVerdictErrBytes = 256
)

// NodeVerdict is one router's view of an expert node it does not trust.
type NodeVerdict struct {
	// NodeID names the node.
	NodeID string `json:"node_id"`
	// State is VerdictSuspect or VerdictEjected.
	State string `json:"state"`
	// Since is when the node entered State: its first failure in a row for
	// a suspect, its ejection for an ejected node.
	Since time.Time `json:"since"`
	// LastError is the last failed call's error, at most MaxVerdictErrBytes.
	LastError string `json:"last_error,omitempty"`
}

func (v *NodeVerdict) validate() error {
	if err := ValidateID(v.NodeID); err != nil {
		return err
	}
	switch {
	case v.State != VerdictSuspect && v.State != VerdictEjected:
		return fmt.Errorf("node %s: state %q, want %s or %s", v.NodeID, v.State, VerdictSuspect, VerdictEjected)
	case v.Since.IsZero():
		return fmt.Errorf("node %s: since is zero", v.NodeID)
	case len(v.LastError) > MaxVerdictErrBytes:
		return fmt.Errorf("node %s: last_error is %d bytes, limit %d", v.NodeID, len(v.LastError), MaxVerdictErrBytes)
	}
	return nil
}

// Validate checks the record.
func (l *LoadRecord) Validate() error {
	if err := ValidateID(l.RouterID); err != nil {
		return err
	}
	if l.Fingerprint == "" || len(l.Fingerprint) > maxFingerprintLen {
		return fmt.Errorf("fingerprint must be 1-%d bytes", maxFingerprintLen)
	}
	if len(l.TokensPerSecond) == 0 || len(l.TokensPerSecond) > 1<<16 {
		return fmt.Errorf("tokens_per_second has %d entries", len(l.TokensPerSecond))
	}
	for _, v := range l.TokensPerSecond {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			return fmt.Errorf("tokens_per_second %v: must be finite and non-negative", v)
		}
	}
	if len(l.Unhealthy) > MaxUnhealthyNodes {
		return fmt.Errorf("unhealthy has %d nodes, limit %d", len(l.Unhealthy), MaxUnhealthyNodes)
	}
	seen := make(map[string]bool, len(l.Unhealthy))
	for i := range l.Unhealthy {
		v := &l.Unhealthy[i]
		if err := v.validate(); err != nil {
			return fmt.Errorf("unhealthy: %w", err)
		}
		if seen[v.NodeID] {
			return fmt.Errorf("unhealthy: node %s listed twice", v.NodeID)
		}
		seen[v.NodeID] = true
	}
	return nil
}

// Meta is the value of Keys.Meta. It marks a prefix as a moegrid cluster of
// a given schema, so that a prefix holding another program's or another
// schema's data is refused instead of misread.
type Meta struct {
	// Schema is "moegrid.v1".
	Schema string `json:"schema"`
	// Created is when the cluster was first opened.
	Created time.Time `json:"created"`
}

// validator is what every record type implements.
type validator interface{ Validate() error }

// decode unmarshals a record value and validates it; errors wrap
// ErrMalformed and name the key.
func decode(key string, b []byte, v validator) error {
	if len(b) > maxRecordBytes {
		return fmt.Errorf("%w %s: %d bytes (limit %d)", ErrMalformed, key, len(b), maxRecordBytes)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w %s: %v", ErrMalformed, key, err)
	}
	if err := v.Validate(); err != nil {
		return fmt.Errorf("%w %s: %v", ErrMalformed, key, err)
	}
	return nil
}

// DecodeNodeRecord decodes and validates the node record stored at key; the
// ID in the record must match the key's.
func (k Keys) DecodeNodeRecord(key string, b []byte) (NodeRecord, error) {
	var r NodeRecord
	kind, id := k.kind(key)
	if kind != kindNode {
		return r, fmt.Errorf("%w %s: not a node key under %s", ErrMalformed, key, k.Nodes())
	}
	if err := decode(key, b, &r); err != nil {
		return NodeRecord{}, err
	}
	if r.ID != id {
		return NodeRecord{}, fmt.Errorf("%w %s: record id %q does not match the key", ErrMalformed, key, r.ID)
	}
	return r, nil
}

// DecodePlacementRecord decodes and validates a placement record.
func DecodePlacementRecord(key string, b []byte) (PlacementRecord, error) {
	var r PlacementRecord
	if err := decode(key, b, &r); err != nil {
		return PlacementRecord{}, err
	}
	return r, nil
}
