// Package retry holds the two pieces every reconnect loop in moegrid needs:
// a sleep that ends early when its context does, and a doubling delay.
package retry

import (
	"context"
	"time"
)

// Sleep waits d or until ctx is done; it reports whether d elapsed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Delay is a retry delay that starts at Min and doubles up to Max. The zero
// value of cur means the next delay is Min. A Delay is not safe for
// concurrent use.
type Delay struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns the delay to wait before the next try.
func (d *Delay) Next() time.Duration {
	if d.cur == 0 {
		d.cur = d.Min
	} else {
		d.cur = min(2*d.cur, d.Max)
	}
	return d.cur
}

// Reset starts over at Min, after a success.
func (d *Delay) Reset() { d.cur = 0 }
