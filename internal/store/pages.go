package store

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Coalesced page reads. Clients asking for the same page at once (the
// first page of a busy listing, say) share one query instead of running
// one each, which under load is most of what a page costs the database. A
// read only ever joins a query that starts after it arrived: while a query
// for its page runs, it waits for the next one. So it sees every write
// acknowledged before it arrived, exactly as a query of its own would, and
// no read returns rows older than itself.
//
// While the database is next door a page's query returns in a fraction of
// a millisecond, and one query at a time per page is enough. Across a
// network the wait for the next query is a round trip on top of the
// read's own, so a page may have as many queries running at once as group
// commit has flights for the same floor (flights.go): one per 2 ms of the
// least time a page query took lately. A read that arrives while fewer
// than that run starts one at once (taking along the reads queued for the
// next); otherwise it queues for the next.

// OnPageRead has fn called with the number of List calls that share each
// page query, just before it is sent, for example to export a histogram.
// fn runs on the query's goroutine: it must be quick, and safe for
// concurrent use.
func OnPageRead(fn func(readers int)) Option {
	return func(s *Store) { s.pages.onRead = fn }
}

// pageKey is what makes two reads the same: their after and limit.
type pageKey struct {
	after int64
	limit int
}

// pageFlight is the queries running for one key, and the read queued
// behind them. It is in pageReader.flights exactly while a query for its
// key runs.
type pageFlight struct {
	running int       // queries running for the key
	next    *pageRead // the reads that arrived while running was at the most allowed; nil if none
}

// pageRead is one query and the reads that share its rows.
type pageRead struct {
	ctx     context.Context // the query's: ends when every read has left
	cancel  context.CancelFunc
	waiting atomic.Int64  // reads still waiting; joined under pageReader.mu
	started bool          // the query has begun; guarded by pageReader.mu
	done    chan struct{} // closed once rows and err are set
	rows    []Test        // shared by every read: never modified
	err     error
}

type pageReader struct {
	// read returns a page and how long its statement took (0 if it
	// failed): not counting a wait for a grouped statement (pagegroup.go),
	// which is load, not the round trip the floor is made of.
	read     func(ctx context.Context, after int64, limit int) ([]Test, time.Duration, error)
	classify func(error) error // the Store's
	onRead   func(readers int)

	maxFlights int // most queries at once for one key

	mu      sync.Mutex
	flights map[pageKey]*pageFlight
	allowed int // queries at once for one key now, from floor; 0 is 1
	floor   roundTripFloor
}

// newPageRead returns a query not yet run. Its context carries the values
// of ctx (a trace, say) but not its end: the query ends when every read
// sharing it has left, not when the one that made it did.
func newPageRead(ctx context.Context) *pageRead {
	qctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	return &pageRead{ctx: qctx, cancel: cancel, done: make(chan struct{})}
}

// do returns the page for k from a query that starts after do was called,
// shared with the other reads of k that were waiting for the same query.
func (p *pageReader) do(ctx context.Context, k pageKey) ([]Test, error) {
	p.mu.Lock()
	f := p.flights[k]
	if f == nil {
		if p.flights == nil {
			p.flights = map[pageKey]*pageFlight{}
		}
		f = &pageFlight{}
		p.flights[k] = f
	}
	if f.running >= max(1, p.allowed) {
		if f.next == nil {
			f.next = newPageRead(ctx)
		}
		pr := f.next
		pr.waiting.Add(1)
		p.mu.Unlock()
		return p.wait(ctx, k, pr)
	}
	pr := f.next // reads queued before: they go now, with this one
	f.next = nil
	if pr == nil {
		pr = newPageRead(ctx)
	}
	pr.started = true
	pr.waiting.Add(1)
	f.running++
	p.mu.Unlock()

	// The read that starts a query runs it on its own goroutine: in a
	// workload of varied pages that is nearly every read, and handing each
	// query to a new goroutine cost 7% of the server's CPU in growing that
	// goroutine's stack alone, plus a wake-up per page (random pages,
	// BENCHMARKS.md). Only the reads that queued behind it meanwhile get a
	// goroutine (fly), so that this one answers as soon as its own rows
	// are in.
	left := context.AfterFunc(ctx, func() { p.leave(pr) })
	took := p.query(k, pr)
	if next := p.advance(k, f, took); next != nil {
		go p.fly(k, f, next)
	}
	if !left() && pr.err != nil {
		// ctx ended before the answer, and this read left pr: answer as
		// wait does.
		return nil, fmt.Errorf("list after %d: %w", k.after, p.classify(ctx.Err()))
	}
	return pr.rows, pr.err
}

// wait waits for pr's answer, or leaves pr when ctx ends first.
func (p *pageReader) wait(ctx context.Context, k pageKey, pr *pageRead) ([]Test, error) {

	select {
	case <-pr.done:
		return pr.rows, pr.err
	case <-ctx.Done():
		select {
		case <-pr.done: // answered as ctx ended: take the answer
			return pr.rows, pr.err
		default:
		}
		p.leave(pr)
		return nil, fmt.Errorf("list after %d: %w", k.after, p.classify(ctx.Err()))
	}
}

// leave takes a read that gave up off pr; the last one to leave a running
// query cancels it on the server. A query not yet started is skipped when
// its turn comes if nobody waits for it any more.
func (p *pageReader) leave(pr *pageRead) {
	if pr.waiting.Add(-1) > 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// Checked again under the lock: a read may have joined since, before
	// the query started; once it has started nobody joins any more.
	if pr.started && pr.waiting.Load() == 0 {
		pr.cancel()
	}
}

// fly runs pr, then the query the reads queued meanwhile share, until
// none is queued.
func (p *pageReader) fly(k pageKey, f *pageFlight, pr *pageRead) {
	for pr != nil {
		took := p.query(k, pr)
		pr = p.advance(k, f, took)
	}
}

// query runs pr, hands its answer to every read waiting for it, and
// returns how long the query took, or 0 if it failed.
func (p *pageReader) query(k pageKey, pr *pageRead) time.Duration {
	if n := pr.waiting.Load(); n > 0 && p.onRead != nil {
		p.onRead(int(n))
	}
	// A query whose reads have all left already has a cancelled context
	// and fails at once.
	var took time.Duration
	pr.rows, took, pr.err = p.read(pr.ctx, k.after, k.limit)
	pr.cancel()
	close(pr.done)
	if pr.err != nil {
		return 0
	}
	return took
}

// advance ends a query of k that took took, and returns the query queued
// behind it, marked started, or nil (and k's flight gone once no query
// runs) when no read waits for one.
func (p *pageReader) advance(k pageKey, f *pageFlight, took time.Duration) *pageRead {
	p.mu.Lock()
	defer p.mu.Unlock()
	f.running--
	if took > 0 { // a failed query (cancelled, say) says nothing of the round trip
		p.allowed = flightsFor(p.floor.observe(took, time.Now()), p.maxFlights)
	}
	pr := f.next
	if pr != nil && pr.waiting.Load() == 0 {
		pr.cancel() // every read queued for it has left
		f.next, pr = nil, nil
	}
	if pr == nil || f.running >= p.allowed {
		if f.running == 0 && f.next == nil {
			delete(p.flights, k)
		}
		return nil
	}
	f.next = nil
	f.running++
	pr.started = true
	return pr
}
