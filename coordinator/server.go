package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/coordinator/placement"
	"github.com/moegrid/moegrid/internal/grpcerr"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// StateDown is the state Status reports for a node that the placement still
// assigns shards to but that has no record any more (its lease expired or
// it was revoked): the placement has not caught up yet, or cannot.
const StateDown = "down"

// errNotConnected reports a request served before etcd was reached.
var errNotConnected = errors.New("coordinator: not connected to etcd yet")

// errInvalidArgument is wrapped by request validation errors.
var errInvalidArgument = errors.New("coordinator: invalid argument")

// server implements moegrid.v1.Cluster on every replica.
type server struct {
	moegridv1.UnimplementedClusterServer
	c *Coordinator
}

var _ moegridv1.ClusterServer = (*server)(nil)

func (s *server) storeOrErr() (*cluster.Store, error) {
	st := s.c.store.Load()
	if st == nil {
		return nil, errNotConnected
	}
	return st, nil
}

// Status reads the cluster in one snapshot and reports it.
func (s *server) Status(ctx context.Context, _ *moegridv1.StatusRequest) (*moegridv1.StatusResponse, error) {
	st, err := s.storeOrErr()
	if err != nil {
		return nil, err
	}
	snap, err := st.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	return buildStatus(snap, s.c.gossipDead), nil
}

// Drain marks a node draining; the leader moves its shards away.
func (s *server) Drain(ctx context.Context, req *moegridv1.DrainRequest) (*moegridv1.DrainResponse, error) {
	if req.GetNodeId() == "" {
		return nil, errors.Join(errInvalidArgument, errors.New("node_id is required"))
	}
	st, err := s.storeOrErr()
	if err != nil {
		return nil, err
	}
	if err := st.Drain(ctx, req.GetNodeId()); err != nil {
		return nil, err
	}
	s.c.log.Info("drain requested", "node", req.GetNodeId())
	return &moegridv1.DrainResponse{}, nil
}

// buildStatus renders a snapshot for capacity planners. dead is the gossip
// verdict on a node.
func buildStatus(snap *cluster.Snapshot, dead func(cluster.NodeRecord) bool) *moegridv1.StatusResponse {
	p := snap.Placement
	resp := &moegridv1.StatusResponse{
		Leader:           snap.Leader,
		PlacementVersion: p.Version,
		PlacementError:   p.Error,
	}
	if p.Version > 0 {
		resp.Model = &moegridv1.ModelShape{
			Experts:             uint32(p.Model.Experts),
			Layers:              uint32(p.Model.Layers),
			BytesPerExpertLayer: uint64(p.Model.BytesPerExpertLayer),
		}
	}
	ids := p.Nodes()
	for _, n := range snap.Nodes {
		ids = append(ids, n.ID)
	}
	slices.Sort(ids)
	views := routerViews(snap.Loads)
	for _, id := range slices.Compact(ids) {
		ns := &moegridv1.NodeStatus{
			Id:              id,
			Assigned:        shardsPB(p.ShardsOf(id)),
			MemoryUsedBytes: uint64(p.BytesOn(id)),
			RouterView:      views[id],
		}
		rec, ok := snap.Node(id)
		if !ok {
			ns.State = StateDown
			resp.Nodes = append(resp.Nodes, ns)
			continue
		}
		ns.GrpcAddr, ns.GossipAddr = rec.GRPCAddr, rec.GossipAddr
		ns.Insecure = rec.Insecure
		ns.State = string(rec.State)
		if snap.Drained(id) {
			ns.State = string(cluster.StateDraining)
		}
		ns.Alive = !dead(rec)
		ns.Device = rec.Device.String()
		ns.MemoryCapacityBytes = uint64(rec.CapacityBytes)
		ns.Loaded = shardsPB(rec.Loaded)
		ns.Load = &moegridv1.NodeLoad{
			ForwardCallsTotal: rec.Load.ForwardCallsTotal,
			RowsTotal:         rec.Load.RowsTotal,
			Inflight:          rec.Load.Inflight,
			RowsPerSecond:     rec.Load.RowsPerSecond,
		}
		if !rec.Heartbeat.IsZero() {
			ns.LastHeartbeat = timestamppb.New(rec.Heartbeat)
		}
		if e := rec.LoadError; e != nil {
			ns.LoadError = &moegridv1.LoadError{Message: e.Message, Time: timestamppb.New(e.Time), Attempts: uint32(e.Attempts)}
		}
		resp.Nodes = append(resp.Nodes, ns)
	}
	for _, a := range p.Assignments {
		ss := &moegridv1.ShardStatus{Shard: shardPB(a.Shard), Nodes: slices.Clone(a.Nodes)}
		for _, id := range a.Nodes {
			if rec, ok := snap.Node(id); ok && rec.Holds(a.Shard) {
				ss.LoadedOn = append(ss.LoadedOn, id)
			}
		}
		resp.Shards = append(resp.Shards, ss)
	}
	return resp
}

// routerViews merges the live routers' verdicts by node: the worse state
// wins (ejected over suspect), counted over the routers that report it,
// with the earliest of their since-times and that verdict's error.
func routerViews(loads []cluster.LoadRecord) map[string]*moegridv1.RouterView {
	type merged struct {
		first   cluster.NodeVerdict
		routers uint32
	}
	byNode := make(map[string]*merged)
	for _, l := range loads {
		for _, v := range l.Unhealthy {
			m := byNode[v.NodeID]
			switch {
			case m == nil || m.first.State == cluster.VerdictSuspect && v.State == cluster.VerdictEjected:
				byNode[v.NodeID] = &merged{first: v, routers: 1}
			case m.first.State == v.State:
				m.routers++
				if v.Since.Before(m.first.Since) {
					m.first = v
				}
			}
		}
	}
	views := make(map[string]*moegridv1.RouterView, len(byNode))
	for id, m := range byNode {
		views[id] = &moegridv1.RouterView{State: m.first.State, Routers: m.routers,
			Since: timestamppb.New(m.first.Since), LastError: m.first.LastError}
	}
	return views
}

func shardPB(s placement.Shard) *moegridv1.Shard {
	return &moegridv1.Shard{Expert: uint32(s.Expert), FirstLayer: uint32(s.First), EndLayer: uint32(s.End)}
}

func shardsPB(ss []placement.Shard) []*moegridv1.Shard {
	var out []*moegridv1.Shard
	for _, s := range ss {
		out = append(out, shardPB(s))
	}
	return out
}

// errorCodes maps the server's domain errors to gRPC codes.
var errorCodes = grpcerr.Table{
	{Err: cluster.ErrNodeNotFound, Code: codes.NotFound},
	{Err: cluster.ErrInvalidID, Code: codes.InvalidArgument},
	{Err: errInvalidArgument, Code: codes.InvalidArgument},
	{Err: errNotConnected, Code: codes.Unavailable},
}

// errorBoundary is the one place where the server's errors become gRPC
// statuses: an unreachable etcd as Unavailable (worth a retry), domain
// errors by errorCodes, anything else as Internal without its details
// (which are logged).
func errorBoundary(log *slog.Logger) *grpcerr.Boundary {
	b := grpcerr.New(errorCodes, log)
	b.Classify = etcdUnavailable
	return b
}

// etcdUnavailable classifies etcd's transport trouble, which its client
// reports as gRPC codes, as Unavailable.
func etcdUnavailable(err error) (codes.Code, bool) {
	var coded interface{ GRPCStatus() *status.Status }
	if errors.As(err, &coded) {
		switch coded.GRPCStatus().Code() {
		case codes.Unavailable, codes.DeadlineExceeded:
			return codes.Unavailable, true
		}
	}
	var etcdCoded interface{ Code() codes.Code }
	if errors.As(err, &etcdCoded) {
		switch etcdCoded.Code() {
		case codes.Unavailable, codes.DeadlineExceeded:
			return codes.Unavailable, true
		}
	}
	return codes.OK, false
}

// etcdAnswers is the coordinator's readiness: etcd reached, the prefix
// checked, and etcd answering now.
func (c *Coordinator) etcdAnswers(ctx context.Context) error {
	st := c.store.Load()
	if st == nil {
		return errNotConnected
	}
	if _, err := st.Client().Get(ctx, st.Keys().Meta()); err != nil {
		return fmt.Errorf("etcd unavailable: %w", err)
	}
	return nil
}
