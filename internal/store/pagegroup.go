package store

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Grouped page queries. Reads of one page share a query (pages.go); reads
// of different pages that start while every page flight is busy go to the
// database together, as one statement in which each page is an index range
// scan of its own (listMany). On PostgreSQL a page's own statement costs
// the database and the store more than its 100 rows do: the round trip,
// the bind and execute, a backend's wake-up, a write and a read on each
// side. One statement for many pages pays that once (BENCHMARKS.md, random
// pages: pgbench gives 1.43 times the pages per second as ten pages a
// statement as it does one at a time).
//
// As with group commit there is no timer: a page query that finds a
// flight free is sent at once, alone, as the plain page statement (list),
// and only the queries that queue while every flight is busy share one.
// A statement answers every page in it at once; the pages each keep the
// snapshot of one statement that started after they were asked for, as
// a query of their own would.
//
// Never on YugabyteDB: there a nested loop reads its inner side with a
// storage read per outer row (a batched nested loop needs an equality, not
// a range with a limit), so the pages of one statement would be read one
// after the other by one backend, each a remote call, where separate
// statements read them at once.
const maxGroupPages = 16 // most pages in one statement: bounds its rows and its time

// How many page statements may run at once: one for every
// pageFlightQuantum of the least time a statement took lately (its floor,
// flights.go), so that across a network the round trip is hidden, and two
// at the least, so that the database reads one while the store decodes
// and answers the other. Measured with a fixed number of flights and
// `go run ./bench -only pages -compare` (BENCHMARKS.md, "Session 5:
// grouped page queries"): on loopback 2 flights gave the most pages per
// second (1: 5%, 3: 10% fewer), at 2 ms each way 4 (2: 7%, 8: 3% fewer).
const (
	minPageFlights    = 2
	pageFlightQuantum = time.Millisecond
)

// pageFlightsFor is the number of page flights for a floor, within
// minPageFlights and maxFlights.
func pageFlightsFor(floor time.Duration, maxFlights int) int {
	n := int((floor + pageFlightQuantum - 1) / pageFlightQuantum)
	return max(1, min(maxFlights, max(minPageFlights, n)))
}

// OnPageGroup has fn called with the number of page queries in each page
// statement (1 for a page sent alone), just before it is sent, for
// example to export a histogram. fn runs on the statement's goroutine: it
// must be quick, and safe for concurrent use.
func OnPageGroup(fn func(pages int)) Option {
	return func(s *Store) { s.groups.onGroup = fn }
}

// pageGroup sends the page queries that pages.go starts.
type pageGroup struct {
	onGroup func(pages int)

	one  func(ctx context.Context, after int64, limit int) ([]Test, error) // a page alone (list)
	many func(ctx context.Context, keys []pageKey) ([][]Test, error)       // several as one statement (listMany)
	on   atomic.Bool                                                       // group at all: set once Migrate found PostgreSQL

	maxFlights   int           // page statements at once at the most
	queueTimeout time.Duration // see QueueTimeout; 0 means no bound

	mu      sync.Mutex
	queue   []*groupRead // waiting for a flight, in arrival order
	flights int          // statements running
	allowed int          // statements that may run now, from floor; 0 until one has run
	floor   roundTripFloor
}

// groupRead is one page query waiting for, or in, a statement.
type groupRead struct {
	ctx  context.Context
	k    pageKey
	done chan struct{} // closed once rows, err and took are set
	rows []Test
	err  error
	took time.Duration // the statement's time; 0 if it failed

	sent    bool // taken into a statement; guarded by pageGroup.mu
	dropped bool // gave up waiting in the queue; guarded by pageGroup.mu
}

// errPageQueueTimeout is what a page query gets when no statement took it
// within the queue timeout; it never reached the database.
var errPageQueueTimeout = fmt.Errorf("%w: timed out waiting for a page statement", ErrUnavailable)

// read returns the page for after and limit, from a statement of its own
// or one it shares with other pages, sent after read was called, and how
// long that statement took (0 if it failed), not counting the wait for it.
func (g *pageGroup) read(ctx context.Context, after int64, limit int) ([]Test, time.Duration, error) {
	if !g.on.Load() || limit <= 0 {
		start := time.Now()
		rows, err := g.one(ctx, after, limit)
		if err != nil {
			return nil, 0, err
		}
		return rows, time.Since(start), nil
	}
	r := &groupRead{ctx: ctx, k: pageKey{after, limit}, done: make(chan struct{})}
	g.mu.Lock()
	if g.flights < g.allowedNow() {
		// A flight is free: this read sends its statement itself, on its
		// own goroutine, taking along what queued (nothing, unless a
		// flight just ended); only the reads queued behind it meanwhile
		// get a goroutine (see pages.go for what a goroutine per read
		// cost).
		g.flights++
		batch := g.take(r)
		g.mu.Unlock()
		if next := g.next(g.run(batch)); next != nil {
			go g.fly(next)
		}
		return r.rows, r.took, r.err
	}
	g.queue = append(g.queue, r)
	g.mu.Unlock()
	// Behind statements that a locked table or a slow database holds, the
	// queue would otherwise keep every page query until its deadline, where
	// a query of its own would have had ErrUnavailable after the acquire
	// timeout.
	var queueTimeout <-chan time.Time
	if g.queueTimeout > 0 {
		t := time.NewTimer(g.queueTimeout)
		defer t.Stop()
		queueTimeout = t.C
	}
	for {
		select {
		case <-r.done:
			return r.rows, r.took, r.err
		case <-ctx.Done():
			select {
			case <-r.done: // answered as ctx ended: the answer is the truth
				return r.rows, r.took, r.err
			default:
				// Left in the queue, it is skipped when its turn comes; in a
				// statement, the statement goes on for the others.
				return nil, 0, ctx.Err()
			}
		case <-queueTimeout:
			g.mu.Lock()
			sent := r.sent
			r.dropped = !sent
			g.mu.Unlock()
			if !sent {
				return nil, 0, errPageQueueTimeout
			}
			queueTimeout = nil // in a statement: wait for its answer
		}
	}
}

// take takes the next statement's reads off the queue: first (if not nil)
// and up to maxGroupPages in all, leaving out reads whose context ended.
// g.mu is held.
func (g *pageGroup) take(first *groupRead) []*groupRead {
	var batch []*groupRead
	if first != nil {
		batch = append(batch, first)
	}
	taken := 0
	for _, r := range g.queue {
		if len(batch) == maxGroupPages {
			break
		}
		taken++
		if r.ctx.Err() == nil && !r.dropped {
			r.sent = true
			batch = append(batch, r)
		}
	}
	clear(g.queue[:taken])
	g.queue = g.queue[taken:]
	return batch
}

// allowedNow is the number of statements that may run; g.mu is held.
func (g *pageGroup) allowedNow() int {
	if g.allowed == 0 {
		return pageFlightsFor(0, g.maxFlights)
	}
	return g.allowed
}

// next records that a flight's statement took took (0: it failed, which
// says nothing of the round trip) and takes the flight's next statement's
// reads, or ends the flight when none is queued or more flights run than
// may.
func (g *pageGroup) next(took time.Duration) []*groupRead {
	g.mu.Lock()
	defer g.mu.Unlock()
	if took > 0 {
		g.allowed = pageFlightsFor(g.floor.observe(took, time.Now()), g.maxFlights)
	}
	var batch []*groupRead
	if g.flights <= g.allowedNow() {
		batch = g.take(nil)
	}
	if len(batch) == 0 {
		g.flights--
		return nil
	}
	return batch
}

// fly runs statements until the queue is empty.
func (g *pageGroup) fly(batch []*groupRead) {
	for batch != nil {
		batch = g.next(g.run(batch))
	}
}

// run sends one statement for batch, answers each of its reads, and
// returns how long the statement took, or 0 if it failed. A read giving
// up does not cancel the statement for the others; once all have, it is
// cancelled on the server.
func (g *pageGroup) run(batch []*groupRead) time.Duration {
	if g.onGroup != nil {
		g.onGroup(len(batch))
	}
	start := time.Now()
	if len(batch) == 1 {
		r := batch[0]
		r.rows, r.err = g.one(r.ctx, r.k.after, r.k.limit)
		took := time.Since(start)
		if r.err != nil {
			took = 0
		}
		r.took = took
		close(r.done)
		return took
	}
	// The values (a trace) of the first read; the end of all of them.
	ctx, release := sharedContext(batch[0].ctx, len(batch), func(i int) context.Context { return batch[i].ctx })
	defer release()
	keys := make([]pageKey, len(batch))
	for i, r := range batch {
		keys[i] = r.k
	}
	pages, err := g.many(ctx, keys)
	took := time.Since(start)
	if err != nil {
		took = 0
	}
	for i, r := range batch {
		if err != nil {
			r.err = err
		} else {
			r.rows = pages[i]
		}
		r.took = took
		close(r.done)
	}
	return took
}
