package kernel

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
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

// spinFor is how long a worker keeps looking for the next loop before it
// parks, and how long a caller waits for the last chunks before it yields:
// the loops of one forward pass follow each other within microseconds, and
// waking a parked thread costs tens of microseconds on a virtual machine,
// more than many of those loops take. It is short enough that an idle
// process gives its cores back at once.
const spinFor = 30 * time.Microsecond

// workers is the number of goroutines a parallel loop runs on.
func workers() int {
	poolOnce.Do(startPool)
	return poolSize
}

func startPool() {
	poolSize = runtime.GOMAXPROCS(0)
	poolWork = make(chan *parallelLoop, poolSize)
	for range poolSize - 1 {
		go worker()
	}
}

// worker runs loops as they come, looking for the next one for spinFor
// after each before it parks.
func worker() {
	for {
		var l *parallelLoop
		select {
		case l = <-poolWork:
		default:
			for deadline := time.Now().Add(spinFor); l == nil && time.Now().Before(deadline); {
				select {
				case l = <-poolWork:
				default:
					// Let goroutines readied on this P (a caller
					// whose loop just finished, say) run.
					runtime.Gosched()
				}
			}
			if l == nil {
				l = <-poolWork
			}
		}
		l.run()
	}
}

// parallelLoop is one call of For: chunks of [0, n) handed out in order to
// whichever goroutine asks next, so a core slowed by other work takes
// fewer of them. Each takes a share of what is left, large at first and
// one chunk at the end (guided scheduling), so that a loop of many chunks
// meets few times and still ends with every goroutine finishing within a
// chunk of the others.
type parallelLoop struct {
	n, grain int
	chunks   int64
	fn       func(lo, hi int)
	next     atomic.Int64 // chunks handed out
	// done counts the chunks finished, and finished is closed with the
	// last: the caller waits for the work, not for the workers, so a loop
	// never waits on a busy pool.
	done     atomic.Int64
	finished chan struct{}
}

func (l *parallelLoop) run() {
	for {
		c := l.next.Load()
		if c >= l.chunks {
			return
		}
		take := max(1, (l.chunks-c)/int64(2*poolSize))
		if !l.next.CompareAndSwap(c, c+take) {
			continue
		}
		l.fn(int(c)*l.grain, min(int(c+take)*l.grain, l.n))
		if l.done.Add(take) == l.chunks {
			close(l.finished)
		}
	}
}

// For calls fn(lo, hi) over disjoint ranges that cover [0, n), each
// starting at a multiple of grain and a multiple of grain long (or ending
// at n), on the pool's goroutines and the caller's, and returns when all
// calls have returned.
// Which goroutine runs which range is not fixed, so fn must compute each
// element the same way whatever range holds it.
func For(n, grain int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	grain = max(grain, 1)
	poolOnce.Do(startPool)
	chunks := int64((n + grain - 1) / grain)
	helpers := min(int64(poolSize), chunks) - 1
	if helpers <= 0 {
		fn(0, n)
		return
	}
	l := &parallelLoop{n: n, grain: grain, chunks: chunks, fn: fn, finished: make(chan struct{})}
	for range helpers {
		select {
		case poolWork <- l:
		default:
			// Every worker is busy with other loops: the caller's
			// goroutine does the rest.
		}
	}
	l.run()
	// What is left is at most one share per worker, already running, the
	// last ones a chunk each: wait for it spinning a little, then parked.
	for deadline := time.Now().Add(spinFor); l.done.Load() < chunks && time.Now().Before(deadline); {
	}
	<-l.finished
}
