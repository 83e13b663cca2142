package expertnode

import (
	"context"
	"math"
	"time"

	"github.com/moegrid/moegrid/cluster"
)

// liveLoad is the node's load now: totals since start and what is in
// flight. RowsPerSecond is filled in by reportLoad.
func (n *Node) liveLoad() cluster.NodeLoad {
	return cluster.NodeLoad{
		ForwardCallsTotal: n.svc.calls.Load(),
		RowsTotal:         n.svc.rows.Load(),
		Inflight:          uint32(max(0, n.svc.inflight.Load())),
		RowsPerSecond:     math.Float64frombits(n.rowsPerSecond.Load()),
	}
}

// reportLoad writes the live load into the node's record every LoadReport.
func (n *Node) reportLoad(ctx context.Context, reg *cluster.Registration) error {
	t := time.NewTicker(n.cfg.LoadReport)
	defer t.Stop()
	last, lastAt := n.svc.rows.Load(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			rows := n.svc.rows.Load()
			n.rowsPerSecond.Store(math.Float64bits(float64(rows-last) / now.Sub(lastAt).Seconds()))
			idle := rows == last
			last, lastAt = rows, now
			l := n.liveLoad()
			// Gossip carries live load within seconds; the record only needs
			// it for status, so an idle node writes nothing new and the
			// lease heartbeat keeps the record fresh.
			if idle && l == reg.Record().Load {
				continue
			}
			if err := reg.Update(ctx, func(r *cluster.NodeRecord) { r.Load = l }); err != nil && ctx.Err() == nil {
				n.log.Debug("load report failed", "err", err)
			}
		}
	}
}
