package store

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/trace"
)

// Group commit for single-row creates. Create queues its name and waits; a
// flight takes what is queued (at most maxBatchSize creates), inserts it
// with one statement, answers every create of it, and takes the next batch
// at once. There is no timer: a lone create is sent as soon as it arrives,
// and under load each statement carries the creates that queued while the
// previous one ran, so the database does one statement and one commit for
// many rows. Each flight runs on one pool connection.
//
// How many flights may run at once adapts to the database (flights.go):
// one when the database's work is what takes the time (more flights would
// only make smaller batches, each with its own statement and commit), more
// when its answers are slow to come back (a network or consensus round
// trip), so that creates do not wait a whole round trip for a flight.
const (
	// maxBatchSize bounds one statement, so that one batch cannot hold a
	// connection (and its creates' answers) for long.
	maxBatchSize = 256
)

// errClosed is what Create answers once Close has begun.
var errClosed = fmt.Errorf("%w: store closed", ErrUnavailable)

// Option configures a Store.
type Option func(*Store)

// OnBatch has fn called with the number of creates in each group-commit
// batch, and the number of batches in flight with it (itself included),
// just before the batch is sent, for example to export histograms. fn runs
// on the batch's goroutine: it must be quick, and safe for concurrent use.
func OnBatch(fn func(size, flights int)) Option {
	return func(s *Store) { s.creates.onBatch = fn }
}

// OnBatchAnswered has fn called with how long each group-commit batch's
// statement took, from being sent to its answer or its error (the round
// trip, the insert and the commit), once it has answered. Like OnBatch's,
// fn runs on the batch's goroutine.
func OnBatchAnswered(fn func(took time.Duration)) Option {
	return func(s *Store) { s.creates.onAnswer = fn }
}

// OnQueueWait has fn called, for each create of a batch just before the
// batch is sent, with how long that create waited in the queue: the part
// of a create's time that group commit adds (a create that finds a flight
// free waits microseconds). Like OnBatch's, fn runs on the batch's
// goroutine.
func OnQueueWait(fn func(waited time.Duration)) Option {
	return func(s *Store) { s.creates.onWait = fn }
}

// QueueTimeout bounds how long a create waits in the queue for its batch to
// be sent, and a page query for its grouped statement (pagegroup.go): after
// d it answers ErrUnavailable, as a request waiting for a pool connection
// does after the acquire timeout, instead of queueing until its own
// deadline behind a slow or locked database. Zero means no bound.
func QueueTimeout(d time.Duration) Option {
	return func(s *Store) {
		s.creates.queueTimeout = d
		s.groups.queueTimeout = d
	}
}

// errQueueTimeout is what a create gets when its batch was not sent within
// the queue timeout; nothing of it reached the database.
var errQueueTimeout = fmt.Errorf("%w: timed out waiting for a create batch", ErrUnavailable)

// Close stops taking creates (they answer ErrUnavailable) and returns once
// every create already queued or sent has its answer. Call it before
// closing the pool, so that no batch is cut off in the middle.
func (s *Store) Close() {
	s.creates.close()
}

// createReq is one Create waiting for its batch.
type createReq struct {
	ctx    context.Context
	name   string
	done   chan createResult // buffered: a batch never waits for a create that gave up
	queued time.Time         // when it was queued

	sent    bool // taken into a batch; guarded by batcher.mu
	dropped bool // gave up waiting in the queue; guarded by batcher.mu
}

type createResult struct {
	t   Test
	err error
}

// batcher queues single-row creates and runs them in batches.
type batcher struct {
	insert       func(ctx context.Context, names []string) ([]Test, error)
	classify     func(error) error // the Store's, which reports errors to ObserveErrors
	onBatch      func(size, flights int)
	onAnswer     func(took time.Duration)
	onWait       func(waited time.Duration)
	tracer       trace.Tracer // see Tracing; nil means no batch spans
	queueTimeout time.Duration
	maxFlights   int // at most this many flights: half the pool, leaving the rest for reads

	mu      sync.Mutex
	queue   []*createReq
	flights int           // batches running, at most ctl.allowed (but for a moment after it shrinks)
	ctl     flightControl // how many flights may run
	closed  bool          // set by close; nothing is queued after it
	wg      sync.WaitGroup
}

// do queues name and waits for its answer or for ctx. A create whose ctx
// ends, or whose queue timeout passes, while it is queued is dropped from
// the queue; one whose ctx ends after its batch was sent gets ctx's error,
// and its row may or may not be stored: it was never acknowledged.
func (b *batcher) do(ctx context.Context, name string) (Test, error) {
	r := &createReq{ctx: ctx, name: name, done: make(chan createResult, 1), queued: time.Now()}
	if err := b.enqueue(r); err != nil {
		return Test{}, err
	}
	var queueTimeout <-chan time.Time
	if b.queueTimeout > 0 {
		t := time.NewTimer(b.queueTimeout)
		defer t.Stop()
		queueTimeout = t.C
	}
	for {
		select {
		case res := <-r.done:
			return res.t, res.err
		case <-ctx.Done():
			select {
			case res := <-r.done: // answered as ctx ended: the answer is the truth
				return res.t, res.err
			default:
				return Test{}, fmt.Errorf("create: %w", b.classify(ctx.Err()))
			}
		case <-queueTimeout:
			b.mu.Lock()
			sent := r.sent
			r.dropped = !sent
			b.mu.Unlock()
			if !sent {
				return Test{}, errQueueTimeout
			}
			queueTimeout = nil // sent in time: wait for the answer
		}
	}
}

func (b *batcher) enqueue(r *createReq) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errClosed
	}
	b.queue = append(b.queue, r)
	if b.flights < b.ctl.allowed {
		b.startFlight()
	}
	return nil
}

// startFlight starts a flight; b.mu is held.
func (b *batcher) startFlight() {
	b.flights++
	b.wg.Add(1)
	go b.fly()
}

// fly runs batches until the queue is empty.
func (b *batcher) fly() {
	defer b.wg.Done()
	for {
		batch, flights := b.next()
		if batch == nil {
			return
		}
		if b.onBatch != nil {
			b.onBatch(len(batch), flights)
		}
		b.send(batch, flights)
	}
}

// next takes the next batch off the queue, leaving out creates whose
// context has ended, or ends the flight if none is left or if more flights
// run than may (the others take the queue). It also returns the flights
// running.
func (b *batcher) next() (batch []*createReq, flights int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.flights > b.ctl.allowed {
		b.flights--
		return nil, 0
	}
	taken := 0
	for _, r := range b.queue {
		if len(batch) == maxBatchSize {
			break
		}
		taken++
		if r.ctx.Err() == nil && !r.dropped {
			r.sent = true
			batch = append(batch, r)
		}
	}
	clear(b.queue[:taken])
	b.queue = b.queue[taken:]
	if len(batch) == 0 {
		b.flights--
		return nil, 0
	}
	if len(b.queue) > 0 && b.flights < b.ctl.allowed {
		b.startFlight() // more queued than one batch holds
	}
	return batch, b.flights
}

// send inserts one batch, answers each of its creates, and times it for
// the flight control. flights is the number running, for its span.
func (b *batcher) send(batch []*createReq, flights int) {
	// The statement runs for the whole batch: it ends once every create
	// of it has given up.
	ctx, release := sharedContext(context.Background(), len(batch), func(i int) context.Context { return batch[i].ctx })
	defer release()
	names := make([]string, len(batch))
	for i, r := range batch {
		names[i] = r.name
	}
	// Each name once, in one order for every batch: two batches running
	// at once then take their unique-index locks in the same order and
	// cannot deadlock on each other.
	slices.Sort(names)
	names = slices.Compact(names)

	var span trace.Span
	if b.tracer != nil {
		ctx, span = b.traceBatch(ctx, batch, flights)
	}
	start := time.Now()
	if b.onWait != nil {
		for _, r := range batch {
			b.onWait(start.Sub(r.queued))
		}
	}
	created, err := b.insert(ctx, names)
	took := time.Since(start)
	if b.onAnswer != nil {
		b.onAnswer(took)
	}
	if span != nil {
		endBatchSpan(span, len(created), err)
	}
	if err != nil {
		err = fmt.Errorf("create: %w", b.classify(err))
		for _, r := range batch {
			if rerr := r.ctx.Err(); rerr != nil {
				// It gave up (and once all have, the statement was
				// cancelled for that): its answer is why it gave up.
				r.done <- createResult{err: fmt.Errorf("create: %w", b.classify(rerr))}
				continue
			}
			r.done <- createResult{err: err}
		}
		return
	}
	b.mu.Lock()
	if b.ctl.observe(took, start.Add(took), b.maxFlights) && len(b.queue) > 0 && b.flights < b.ctl.allowed {
		b.startFlight()
	}
	b.mu.Unlock()
	byName := make(map[string]Test, len(created))
	for _, t := range created {
		byName[t.Name] = t
	}
	for _, r := range batch {
		// A name the statement did not return was taken; of creates
		// with the same name, the first in the queue gets the row.
		t, ok := byName[r.name]
		if !ok {
			r.done <- createResult{err: fmt.Errorf("create %q: %w", r.name, ErrConflict)}
			continue
		}
		delete(byName, r.name)
		r.done <- createResult{t: t}
	}
}

// close stops the queue and waits for the flights to empty it.
func (b *batcher) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.wg.Wait()
}

// insertBatch inserts names (each once) in one statement, in an implicit
// transaction, and returns the rows it created; a name already taken
// returns no row. The rows are only returned once the whole result has
// been read: pgx reads up to ReadyForQuery, which the server sends after
// the implicit transaction has committed, and an error at commit reaches
// err. Nothing is acknowledged before its commit.
func (s *Store) insertBatch(ctx context.Context, names []string) ([]Test, error) {
	var created []Test
	err := retry(ctx, func() error {
		rows, _ := s.pool.Query(ctx, insertNames, names)
		var err error
		if created, err = pgx.CollectRows(rows, scanTest); err != nil {
			return commitErr{err} // the statement commits as it ends: see retryable
		}
		return nil
	})
	return created, err
}
