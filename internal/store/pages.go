package store

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/trace"
)

// Coalesced page reads. Clients asking for the same page at once (the
// first page of a busy listing, say) share one query instead of running
// one each, which under load is most of what a page costs the database. A
// read only ever joins a query that starts after it arrived: while a query
// for its page runs, it waits for the next one. So it sees every write
// acknowledged before it arrived, exactly as a query of its own would, and
// no read returns rows older than itself.

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

// pageFlight is the query running for one key, and the read queued behind
// it. It is in pageReader.flights exactly while a query for its key runs.
type pageFlight struct {
	next *pageRead // the reads that arrived while the query ran; nil if none
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
	read     func(ctx context.Context, after int64, limit int) ([]Test, error)
	classify func(error) error // the Store's
	onRead   func(readers int)
	traced   bool // see Tracing: a query runs under the span of the read that started it

	mu      sync.Mutex
	flights map[pageKey]*pageFlight
}

// newPageRead returns a query for the reads that join it; ctx is the
// read's that makes it, of which it keeps only the span, and only when
// traced: the query must outlive any one read's cancellation.
func (p *pageReader) newPageRead(ctx context.Context) *pageRead {
	base := context.Background()
	if p.traced {
		base = trace.ContextWithSpan(base, trace.SpanFromContext(ctx))
	}
	ctx, cancel := context.WithCancel(base)
	return &pageRead{ctx: ctx, cancel: cancel, done: make(chan struct{})}
}

// do returns the page for k from a query that starts after do was called,
// shared with the other reads of k that were waiting for the same query.
func (p *pageReader) do(ctx context.Context, k pageKey) ([]Test, error) {
	p.mu.Lock()
	f, running := p.flights[k]
	var pr *pageRead
	if running {
		if f.next == nil {
			f.next = p.newPageRead(ctx)
		}
		pr = f.next
	} else {
		if p.flights == nil {
			p.flights = map[pageKey]*pageFlight{}
		}
		f = &pageFlight{}
		p.flights[k] = f
		pr = p.newPageRead(ctx)
		pr.started = true
		pr.waiting.Add(1) // before fly reads it
		go p.fly(k, f, pr)
		p.mu.Unlock()
		return p.wait(ctx, k, pr)
	}
	pr.waiting.Add(1)
	p.mu.Unlock()
	return p.wait(ctx, k, pr)
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

// fly runs the query for k, then the one the reads queued meanwhile share,
// until none is queued.
func (p *pageReader) fly(k pageKey, f *pageFlight, pr *pageRead) {
	for pr != nil {
		if n := pr.waiting.Load(); n > 0 && p.onRead != nil {
			p.onRead(int(n))
		}
		// A query whose reads have all left already has a cancelled
		// context and fails at once.
		pr.rows, pr.err = p.read(pr.ctx, k.after, k.limit)
		pr.cancel()
		close(pr.done)

		p.mu.Lock()
		pr, f.next = f.next, nil
		if pr != nil && pr.waiting.Load() == 0 {
			pr.cancel() // every read queued for it has left
			pr = nil
		}
		if pr == nil {
			delete(p.flights, k)
		} else {
			pr.started = true
		}
		p.mu.Unlock()
	}
}
