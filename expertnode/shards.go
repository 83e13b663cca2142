package expertnode

import (
	"sync"

	"github.com/moegrid/moegrid/model"
)

// expertSet is what the node needs of a loaded set of experts: whatever
// their weight format, it computes them, says which it holds and what they
// occupy, and releases their mapping.
type expertSet interface {
	model.Experts
	Has(layer, expert int) bool
	Len() int
	Bytes() int64
	Close() error
}

var _ expertSet = (*model.ExpertSet)(nil)

// holding is one loaded set of experts and the calls using it.
type holding struct {
	set   expertSet
	users sync.WaitGroup
}

// shardStore holds the current expert set and swaps in new ones without
// dropping calls in flight: a call pins the set it started with, and an old
// set is unmapped only once its last call has finished.
type shardStore struct {
	mu  sync.RWMutex
	cur *holding // protected by mu; nil before the first load
}

// acquire pins the current set; release must be called when done. It returns
// nil when nothing is loaded.
func (s *shardStore) acquire() (expertSet, func()) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	h := s.cur
	if h == nil {
		return nil, func() {}
	}
	h.users.Add(1)
	return h.set, h.users.Done
}

// swap installs set and closes the previous one once its calls have
// finished. It blocks until then.
func (s *shardStore) swap(set expertSet) {
	s.mu.Lock()
	old := s.cur
	if set != nil {
		s.cur = &holding{set: set}
	} else {
		s.cur = nil
	}
	s.mu.Unlock()
	if old != nil {
		old.users.Wait()
		old.set.Close()
	}
}
