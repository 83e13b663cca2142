package placement

import (
	"errors"
	"fmt"

	record "github.com/moegrid/moegrid/placement"
)

var (
	// ErrInvalidInput is wrapped by every error about malformed input to
	// Compute: duplicate or empty node IDs, negative capacities, a model with
	// no experts, layers or bytes, load statistics of the wrong length or with
	// negative values, inconsistent options. It is the record's sentinel.
	ErrInvalidInput = record.ErrInvalidInput

	// ErrNoNodes is returned when no schedulable (non-draining) node exists.
	ErrNoNodes = errors.New("placement: no schedulable nodes")

	// ErrTooFewNodes is returned when MinReplicas exceeds the number of
	// schedulable nodes: the replicas of a shard could not be kept on
	// distinct nodes.
	ErrTooFewNodes = errors.New("placement: fewer schedulable nodes than replicas")

	// ErrInvalidPlacement is wrapped by the errors of Placement.Validate.
	ErrInvalidPlacement = record.ErrInvalidPlacement
)

// InsufficientCapacityError reports that the schedulable nodes cannot hold
// MinReplicas copies of every expert layer. Compute never returns a partial
// placement instead.
type InsufficientCapacityError struct {
	// Need is the number of bytes MinReplicas copies of every expert take:
	// Experts * Layers * BytesPerExpertLayer * MinReplicas.
	Need int64
	// Have is the usable memory of the schedulable nodes, in bytes: each
	// node's capacity rounded down to whole expert layers, and at most one
	// copy of every expert layer per node (a second copy on the same node
	// would not be a replica).
	Have int64
}

func (e *InsufficientCapacityError) Error() string {
	return fmt.Sprintf("placement: insufficient capacity: need %d (%s), have %d (%s)",
		e.Need, humanBytes(e.Need), e.Have, humanBytes(e.Have))
}

// humanBytes formats n in binary units with one decimal, e.g. "84.0 GiB".
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidInput}, args...)...)
}
