package coordinator

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/coordinator/placement"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// WriteStatusTable renders a Status for people: a summary line, the
// placement error if any, and one row per node:
//
//	NODE  STATE  ALIVE  SHARDS  LOADED  MEMORY  LOAD  HEARTBEAT
//
// SHARDS and LOADED list shards as e3 (expert 3, every layer) or e3:0-15
// (layers 0 to 15); MEMORY is assigned weights / capacity; LOAD is the
// node's recent rows per second and in-flight calls; HEARTBEAT is the age of
// the node's record relative to now. STATE is the node's own state unless a
// router holds the ready node suspect or ejected: then "suspect" or
// "ejected (N routers)", with a line under the row saying since when and
// the last failed call's error. A node failing to load its shards has a
// line under its row with the last error, its age and the failed attempts.
func WriteStatusTable(w io.Writer, s *moegridv1.StatusResponse, now time.Time) error {
	var layers uint32
	if m := s.GetModel(); m != nil {
		layers = m.GetLayers()
	}
	leader := s.GetLeader()
	if leader == "" {
		leader = "none"
	}
	fmt.Fprintf(w, "leader: %s   placement: v%d", leader, s.GetPlacementVersion())
	if m := s.GetModel(); m != nil {
		fmt.Fprintf(w, "   model: %d experts × %d layers × %s", m.GetExperts(), m.GetLayers(), humanize.IBytes(m.GetBytesPerExpertLayer()))
	}
	fmt.Fprintln(w)
	if e := s.GetPlacementError(); e != "" {
		fmt.Fprintf(w, "placement error: %s\n", e)
	}
	// The table goes through a buffer so that the error lines, which are
	// not cells, can go under their rows without breaking the columns.
	var table bytes.Buffer
	tw := tabwriter.NewWriter(&table, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tALIVE\tSHARDS\tLOADED\tMEMORY\tLOAD\tHEARTBEAT")
	for _, n := range s.GetNodes() {
		alive := "no"
		if n.GetAlive() {
			alive = "yes"
		}
		mem := "-"
		if c := n.GetMemoryCapacityBytes(); c > 0 {
			mem = fmt.Sprintf("%s/%s %d%%", humanize.IBytes(n.GetMemoryUsedBytes()), humanize.IBytes(c), n.GetMemoryUsedBytes()*100/c)
		} else if u := n.GetMemoryUsedBytes(); u > 0 {
			mem = humanize.IBytes(u) + "/-"
		}
		load := "-"
		if l := n.GetLoad(); l != nil {
			load = fmt.Sprintf("%.1f rows/s, %d inflight", l.GetRowsPerSecond(), l.GetInflight())
		}
		hb := "-"
		if t := n.GetLastHeartbeat(); t != nil {
			hb = age(now.Sub(t.AsTime())) + " ago"
		}
		id := n.GetId()
		if n.GetInsecure() {
			id += " INSECURE"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, nodeState(n), alive,
			formatShards(n.GetAssigned(), layers), formatShards(n.GetLoaded(), layers), mem, load, hb)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	lines := strings.SplitAfter(table.String(), "\n")
	var out strings.Builder
	out.WriteString(lines[0])
	for i, n := range s.GetNodes() {
		out.WriteString(lines[i+1])
		if v := n.GetRouterView(); v != nil {
			fmt.Fprintf(&out, "  %s by %s %s ago, last error: %s\n", v.GetState(), routers(v.GetRouters()), age(now.Sub(v.GetSince().AsTime())),
				oneLine(v.GetLastError()))
		}
		if e := n.GetLoadError(); e != nil {
			fmt.Fprintf(&out, "  load error (attempt %d, %s ago): %s\n", e.GetAttempts(), age(now.Sub(e.GetTime().AsTime())),
				oneLine(e.GetMessage()))
		}
	}
	_, err := io.WriteString(w, out.String())
	return err
}

// nodeState is a node's STATE cell: a ready node that routers distrust
// shows their verdict, since that is what its clients get; any other state
// keeps the verdict after it.
func nodeState(n *moegridv1.NodeStatus) string {
	v := n.GetRouterView()
	if v == nil {
		return n.GetState()
	}
	verdict := v.GetState()
	if verdict == cluster.VerdictEjected {
		verdict += " (" + routers(v.GetRouters()) + ")"
	}
	if n.GetState() == string(cluster.StateReady) {
		return verdict
	}
	return n.GetState() + ", " + verdict
}

func routers(n uint32) string {
	if n == 1 {
		return "1 router"
	}
	return fmt.Sprintf("%d routers", n)
}

// oneLine folds a message's whitespace, newlines included, so that it
// cannot break the table.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// formatShards lists shards compactly; layers is the model's layer count
// (0 if unknown).
func formatShards(ss []*moegridv1.Shard, layers uint32) string {
	if len(ss) == 0 {
		return "-"
	}
	parts := make([]string, len(ss))
	for i, s := range ss {
		if s.GetFirstLayer() == 0 && layers > 0 && s.GetEndLayer() == layers {
			parts[i] = fmt.Sprintf("e%d", s.GetExpert())
		} else {
			parts[i] = fmt.Sprintf("e%d:%d-%d", s.GetExpert(), s.GetFirstLayer(), s.GetEndLayer()-1)
		}
	}
	return strings.Join(parts, ",")
}

// age renders a duration coarsely: 850ms, 12s, 3m, 5h, 2d.
func age(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// WriteStatusJSON renders a Status as the protobuf JSON mapping of
// moegrid.v1.StatusResponse (lowerCamelCase fields, 64-bit integers as
// strings, timestamps in RFC 3339, every field present even when zero, an
// absent message as null), indented with two spaces. The output is stable:
// scripts and golden files may rely on it.
func WriteStatusJSON(w io.Writer, s *moegridv1.StatusResponse) error {
	b, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(s)
	if err != nil {
		return fmt.Errorf("coordinator: encode status: %w", err)
	}
	// protojson varies its whitespace on purpose; re-indent for stable
	// output.
	var compact, out bytes.Buffer
	if err := json.Compact(&compact, b); err != nil {
		return fmt.Errorf("coordinator: encode status: %w", err)
	}
	if err := json.Indent(&out, compact.Bytes(), "", "  "); err != nil {
		return fmt.Errorf("coordinator: encode status: %w", err)
	}
	out.WriteByte('\n')
	_, err = w.Write(out.Bytes())
	return err
}

// WritePlacementTable prints a computed placement for capacity planning: one
// row per node with its shards, the bytes they take and the node's capacity,
// in the shard notation of WriteStatusTable.
func WritePlacementTable(w io.Writer, p placement.Placement, nodes []placement.Node) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSHARDS\tMEMORY\tUSE")
	for _, n := range nodes {
		var ss []*moegridv1.Shard
		for _, s := range p.ShardsOf(n.ID) {
			ss = append(ss, &moegridv1.Shard{Expert: uint32(s.Expert), FirstLayer: uint32(s.First), EndLayer: uint32(s.End)})
		}
		used := p.BytesOn(n.ID)
		use := "-"
		if n.CapacityBytes > 0 {
			use = fmt.Sprintf("%.0f%%", 100*float64(used)/float64(n.CapacityBytes))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s/%s\t%s\n", n.ID, formatShards(ss, uint32(p.Model.Layers)),
			humanize.IBytes(uint64(used)), humanize.IBytes(uint64(n.CapacityBytes)), use)
	}
	return tw.Flush()
}
