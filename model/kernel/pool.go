package kernel

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// The kernels share one pool of worker goroutines per process, started on
// first use and kept for the life of the process, like the runtime's own
// threads: a forward pass runs hundreds of parallel loops per token, and
// starting goroutines for each would cost more than the smaller loops do.
var (
	poolOnce sync.Once
	poolWork chan *parallelLoop
	// poolSize is the number of goroutines a loop runs on: the workers
	// and the caller.
	poolSize int
)

// workers is the number of goroutines a parallel loop runs on.
func workers() int {
	poolOnce.Do(startPool)
	return poolSize
}

func startPool() {
	poolSize = runtime.GOMAXPROCS(0)
	poolWork = make(chan *parallelLoop, poolSize)
	for range poolSize - 1 {
		go func() {
			for l := range poolWork {
				l.run()
			}
		}()
	}
}

// parallelLoop is one call of For: chunks of [0, n) handed out in order to
// whichever goroutine asks next, so a core slowed by other work takes
// fewer of them.
type parallelLoop struct {
	n, grain int
	fn       func(lo, hi int)
	next     atomic.Int64
	// chunks counts the chunks not yet done: the caller waits for the
	// work, not for the workers, so a loop never waits on a busy pool.
	chunks sync.WaitGroup
}

func (l *parallelLoop) run() {
	for {
		lo := int(l.next.Add(int64(l.grain))) - l.grain
		if lo >= l.n {
			return
		}
		l.fn(lo, min(lo+l.grain, l.n))
		l.chunks.Done()
	}
}

// For calls fn(lo, hi) over disjoint ranges that cover [0, n), each at
// most grain long and starting at a multiple of grain, on the pool's
// goroutines and the caller's, and returns when all calls have returned.
// Which goroutine runs which range is not fixed, so fn must compute each
// element the same way whatever range holds it.
func For(n, grain int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	grain = max(grain, 1)
	poolOnce.Do(startPool)
	chunks := (n + grain - 1) / grain
	helpers := min(poolSize, chunks) - 1
	if helpers <= 0 {
		fn(0, n)
		return
	}
	l := &parallelLoop{n: n, grain: grain, fn: fn}
	l.chunks.Add(chunks)
	for range helpers {
		select {
		case poolWork <- l:
		default:
			// Every worker is busy with other loops: the caller's
			// goroutine does the rest.
		}
	}
	l.run()
	l.chunks.Wait()
}
