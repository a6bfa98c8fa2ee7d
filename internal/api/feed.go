package api

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ybrest/testsapi/internal/store"
)

// changeStore is what the change feed needs from the store.
type changeStore interface {
	FeedState(ctx context.Context) (store.FeedState, error)
	FeedSnapshot(ctx context.Context, after int64, fn func(store.Test) error) (store.Snapshot, error)
	ChangesAfter(ctx context.Context, cursor int64, limit int) ([]store.Change, error)
}

var _ changeStore = (*store.Store)(nil)

// FeedConfig tunes the change feed.
type FeedConfig struct {
	MaxFeeds  int           // most feeds connected to this instance at once; more is 503
	Heartbeat time.Duration // longest a feed goes without a byte: then an SSE comment
	// MaxLag is how many changes further behind than its best a feed may
	// fall before it is cut with an end event: a client that reads slower
	// than the table changes.
	MaxLag int64
	Poll   time.Duration // how often the instance looks for new changes
	// PollTimeout bounds each look: one that gets no answer within it (a
	// pooled connection that hangs) is cut, and the next poll tries again.
	// 0 means 2 s.
	PollTimeout time.Duration
	// Unavailable is how long a feed waits for the database: a page it
	// reads itself (catching up) and the instance's looks, failing or cut
	// one after the other. Then the feed ends with reason unavailable and
	// the client resumes from its last id, instead of getting heartbeats
	// and nothing else for as long as the database is gone. 0 means 10 s.
	Unavailable time.Duration
}

// Feed limits and sizes.
const (
	feedPage = 500 // changes read per query by a feed that is behind
	// feedRing is how many recent changes an instance keeps in memory for
	// the feeds that are up to date: one copy for all of them.
	feedRing = 10000
)

// Feed serves the change feed: GET /tests with Accept: text/event-stream.
// One tail per instance (Run) reads the changes the consumer records and
// keeps the recent ones; each connected feed takes from them what it has
// not sent, or, when it is behind them, reads a page from the database
// itself. Nothing is buffered per client beyond one page.
type Feed struct {
	log *slog.Logger
	st  changeStore
	cfg FeedConfig

	slots   chan struct{} // one per connected feed
	kick    chan struct{} // Notify: new changes were committed here
	closing chan struct{} // closed by Shutdown
	once    sync.Once
	off     atomic.Bool // see Disable

	mu    sync.Mutex
	ring  []store.Change // the changes with base < seq <= head, in seq order
	base  int64
	head  int64
	fresh bool          // ring and head follow the table (a feed is connected)
	wake  chan struct{} // closed when head moves
	subs  int
	// failing is when the first of the polls that are failing began
	// (zero while they succeed), failErr the last one's error; a feed
	// ends once they have failed for Unavailable while it was connected.
	failing  time.Time
	failErr  error
	reported bool // the outage was logged as ending feeds
}

// NewFeed returns the feed over st. Call Run to follow the changes.
func NewFeed(log *slog.Logger, st changeStore, cfg FeedConfig) *Feed {
	if cfg.PollTimeout <= 0 {
		cfg.PollTimeout = 2 * time.Second
	}
	if cfg.Unavailable <= 0 {
		cfg.Unavailable = 10 * time.Second
	}
	return &Feed{
		log: log, st: st, cfg: cfg,
		slots:   make(chan struct{}, cfg.MaxFeeds),
		kick:    make(chan struct{}, 1),
		closing: make(chan struct{}),
		wake:    make(chan struct{}),
	}
}

// Disable turns the feed off after the fact: FEED=auto on a database
// found to lack logical replication. GET /tests then answers as if it
// had no feed.
func (f *Feed) Disable() { f.off.Store(true) }

// On reports whether the feed is served; a nil Feed is off.
func (f *Feed) On() bool { return f != nil && !f.off.Load() }

// Notify tells the feed that changes were just recorded (store.OnChanges),
// so that it looks before its next poll.
func (f *Feed) Notify() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// Shutdown ends every connected feed with an end event that says the
// instance is stopping (the client reconnects, to another instance,
// with its Last-Event-ID); for http.Server.RegisterOnShutdown.
func (f *Feed) Shutdown() { f.once.Do(func() { close(f.closing) }) }

// Run follows the recorded changes until ctx is done, while feeds are
// connected.
func (f *Feed) Run(ctx context.Context) {
	tick := time.NewTicker(f.cfg.Poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-f.kick:
		}
		for f.poll(ctx) {
		}
	}
}

// poll reads the changes after head into the ring and wakes the feeds;
// it reports whether there may be more at once. A poll that fails, or
// gets no answer within PollTimeout, is tried again at the next tick (see
// failed).
func (f *Feed) poll(ctx context.Context) bool {
	f.mu.Lock()
	subs, fresh, head := f.subs, f.fresh, f.head
	if subs == 0 {
		f.fresh = false // nobody reads: stop following, start afresh later
		f.ring = nil
		f.failing, f.failErr, f.reported = time.Time{}, nil, false // and an outage is nobody's
	}
	f.mu.Unlock()
	if subs == 0 {
		return false
	}
	start := time.Now()
	pollCtx, cancel := context.WithTimeout(ctx, f.cfg.PollTimeout)
	defer cancel()
	if !fresh {
		st, err := f.st.FeedState(pollCtx)
		if err != nil {
			f.failed(ctx, start, err)
			return false
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.answered()
		f.ring, f.base, f.head, f.fresh = nil, st.LastSeq, st.LastSeq, true
		f.broadcast()
		return true
	}
	cs, err := f.st.ChangesAfter(pollCtx, head, feedPage)
	if err != nil && !errors.Is(err, store.ErrCursorGone) {
		f.failed(ctx, start, err)
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answered()
	if err != nil {
		// A gap (a lost slot) or a purge passed head: start afresh; the
		// feeds behind it find out from their own reads.
		f.fresh = false
		f.broadcast()
		return true
	}
	if len(cs) == 0 {
		return false
	}
	f.ring = append(f.ring, cs...)
	if n := len(f.ring) - feedRing; n > 0 {
		f.base = f.ring[n-1].Seq
		f.ring = append(f.ring[:0:0], f.ring[n:]...)
	}
	f.head = cs[len(cs)-1].Seq
	f.broadcast()
	return len(cs) == feedPage
}

// failed records a poll begun at start that failed or got no answer in
// time. A hung poll and a failing one are the same to the feeds: the next
// tick tries again, and a feed that has been connected while the polls
// failed for Unavailable ends with reason unavailable (see read); each
// failure wakes the feeds to look.
func (f *Feed) failed(ctx context.Context, start time.Time, err error) {
	if ctx.Err() != nil {
		return // Run is stopping
	}
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("no answer within %s: %w", f.cfg.PollTimeout, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing.IsZero() {
		f.failing = start
		// Once an outage, not every poll's: a poll may come every 10 ms.
		f.log.Warn("change feed: read changes; retrying at each poll", "error", err.Error())
	}
	f.failErr = err
	if !f.reported && time.Since(f.failing) >= f.cfg.Unavailable {
		f.reported = true
		f.log.Error("change feed: no changes read for "+f.cfg.Unavailable.String()+"; the connected feeds end (unavailable)", "error", err.Error())
	}
	f.broadcast()
}

// answered records a poll that got its answer, ending an outage; f.mu is
// held.
func (f *Feed) answered() {
	if f.failing.IsZero() {
		return
	}
	f.log.Info("change feed: reading changes again", "after", time.Since(f.failing).Round(time.Millisecond).String())
	f.failing, f.failErr, f.reported = time.Time{}, nil, false
}

// broadcast wakes every feed waiting for head to move; f.mu is held.
func (f *Feed) broadcast() {
	close(f.wake)
	f.wake = make(chan struct{})
}

// read returns up to feedPage changes after cursor, from the ring when it
// holds them, from the database otherwise; with head as far as this
// instance knows and a channel closed when head moves. For a feed
// connected since since, it fails once the tail's polls have failed for
// Unavailable of that time.
func (f *Feed) read(ctx context.Context, cursor int64, since time.Time) ([]store.Change, int64, <-chan struct{}, error) {
	f.mu.Lock()
	head, wake, fresh, base := f.head, f.wake, f.fresh, f.base
	if failing := f.failing; !failing.IsZero() {
		if since.After(failing) {
			failing = since
		}
		if d := time.Since(failing); d >= f.cfg.Unavailable {
			err := fmt.Errorf("%w: the change feed read no changes for %s: %w", store.ErrUnavailable, d.Round(time.Millisecond), f.failErr)
			f.mu.Unlock()
			return nil, max(head, cursor), wake, err
		}
	}
	if fresh && cursor >= base {
		i := sort.Search(len(f.ring), func(i int) bool { return f.ring[i].Seq > cursor })
		cs := f.ring[i:min(len(f.ring), i+feedPage)]
		f.mu.Unlock()
		return cs, max(head, cursor), wake, nil // a tail behind this feed's own cursor is no lag
	}
	f.mu.Unlock()
	if !fresh {
		// The tail is (re)starting: wait for it rather than read.
		return nil, max(head, cursor), wake, nil
	}
	// A page the feed reads itself waits no longer for the database than
	// the tail does, in all, before the feed ends.
	readCtx, cancel := context.WithTimeout(ctx, f.cfg.Unavailable)
	defer cancel()
	cs, err := f.st.ChangesAfter(readCtx, cursor, feedPage)
	if err != nil && readCtx.Err() != nil && ctx.Err() == nil {
		err = fmt.Errorf("read changes: no answer within %s: %w", f.cfg.Unavailable, err)
	}
	return cs, max(head, cursor), wake, err
}

func (f *Feed) subscribe() {
	f.mu.Lock()
	f.subs++
	f.mu.Unlock()
	f.Notify() // a tail that was idle starts at once
}

func (f *Feed) unsubscribe() {
	f.mu.Lock()
	f.subs--
	f.mu.Unlock()
}

// feedCursor reads the cursor a feed resumes from: the Last-Event-ID
// header (what EventSource sends when it reconnects) or the cursor query
// parameter; ok is false when there is none.
func feedCursor(r *http.Request, q url.Values) (cursor int64, ok bool, err error) {
	h, hasHeader := r.Header["Last-Event-Id"]
	p, hasParam := q["cursor"]
	if !hasHeader && !hasParam {
		return 0, false, nil
	}
	if len(h) > 1 || len(p) > 1 || hasHeader && hasParam && h[0] != p[0] {
		return 0, false, badRequest("Give one cursor: Last-Event-ID or the cursor parameter, once.")
	}
	s := p
	if hasHeader {
		s = h
	}
	c, err := parseUint(s[0])
	if err != nil {
		return 0, false, badRequest("The cursor (Last-Event-ID) must be an event id of this feed.")
	}
	return c, true, nil
}

// errTooManyFeeds is the answer past MaxFeeds.
var errTooManyFeeds = &requestError{status: http.StatusServiceUnavailable,
	detail: "Too many change feeds are connected; retry shortly."}

// serve handles GET /tests as an event stream: 200, 400, 410, 503. Without
// a cursor it first sends the rows with an id above after (event row, no
// id) and event ready, then every change (create, rename, delete,
// truncate) as it commits; with one, the changes after it. The rows take
// a slot of exports, since they hold a database connection while they
// are sent. A HEAD answers the status and headers a GET would, and ends.
func (f *Feed) serve(log *slog.Logger, w http.ResponseWriter, r *http.Request, q url.Values, after int64, lim Limits, exports chan struct{}) {
	cursor, resume, err := feedCursor(r, q)
	if err != nil {
		respond(log, w, r, err)
		return
	}
	if r.Method == http.MethodHead {
		f.answerHead(log, w, r, cursor, resume, lim, exports)
		return
	}
	select {
	case f.slots <- struct{}{}:
		defer func() { <-f.slots }()
	default:
		respond(log, w, r, errTooManyFeeds)
		return
	}
	f.subscribe()
	defer f.unsubscribe()
	since := time.Now()

	rc := http.NewResponseController(w)
	sw := &sseWriter{w: w, rc: rc, bw: bufio.NewWriterSize(w, streamFlushBytes), timeout: lim.WriteTimeout}
	ctx := r.Context()

	var sn store.Snapshot
	if resume {
		st, err := f.state(ctx, lim)
		if err == nil {
			err = st.Check(cursor)
		}
		if err != nil {
			respond(log, w, r, err)
			return
		}
		sn = store.Snapshot{Head: st}
	} else {
		select {
		case exports <- struct{}{}:
		default:
			respond(log, w, r, errTooManyExports)
			return
		}
		done := func() { <-exports }
		// Until the first row comes the request timeout bounds the read;
		// once rows flow, the client's pace does (the write timeout).
		rowsCtx, cancel := context.WithCancel(ctx)
		firstRow := time.AfterFunc(lim.RequestTimeout, cancel)
		sn, err = f.st.FeedSnapshot(rowsCtx, after, func(t store.Test) error {
			if !sw.started {
				if !firstRow.Stop() {
					return context.DeadlineExceeded
				}
				sw.start()
			}
			return sw.event("row", "", appendTest(sw.buf(), t))
		})
		firstRow.Stop()
		cancel()
		done()
		if err != nil {
			if !sw.started {
				if rowsCtx.Err() != nil && ctx.Err() == nil {
					err = context.DeadlineExceeded
				}
				respond(log, w, r, err)
				return
			}
			f.cut(r, err)
		}
		cursor = sn.Head.LastSeq
	}
	if !sw.started {
		sw.start()
	}
	if !resume {
		id := ""
		if !sn.Exact() {
			id = itoa(cursor) // nothing to filter: the head resumes
		}
		if err := sw.event("ready", id, []byte("{}")); err != nil {
			f.cut(r, err)
		}
	}
	// Until the first change past the snapshot, changes the rows already
	// show are skipped, and the others carry no id: resumed from one of
	// them, a feed could not skip the rest.
	filter := !resume
	heartbeat := time.NewTicker(f.cfg.Heartbeat)
	defer heartbeat.Stop()
	bestLag := int64(-1)
	for {
		cs, head, wake, err := f.read(ctx, cursor, since)
		if errors.Is(err, store.ErrCursorGone) {
			f.end(r, sw, "gone", "Changes after this feed's position are no longer kept (or were never recorded): read the table again, then follow the feed from its new position.")
			return
		}
		if err != nil {
			if ctx.Err() == nil {
				logError(log, r, http.StatusOK, err)
			}
			// The client reconnects with its Last-Event-ID.
			f.end(r, sw, "unavailable", "The database is unavailable; reconnect shortly with the last event id.")
			return
		}
		for _, c := range cs {
			cursor = c.Seq
			id := itoa(c.Seq)
			if filter {
				if filter = !sn.Past(c); filter {
					if sn.Seen(c) {
						continue
					}
					id = ""
				}
			}
			if err := sw.event(c.Kind, id, appendChange(sw.buf(), c)); err != nil {
				f.cut(r, err)
			}
		}
		if err := sw.flush(); err != nil {
			f.cut(r, err)
		}
		lag := head - cursor
		if bestLag < 0 || lag < bestLag {
			bestLag = lag
		}
		if lag-bestLag > f.cfg.MaxLag {
			f.end(r, sw, "behind", "This feed fell more than "+itoa(f.cfg.MaxLag)+" changes behind the table: reconnect with the last event id to go on.")
			return
		}
		if len(cs) > 0 && cursor < head {
			continue
		}
		select {
		case <-wake:
		case <-heartbeat.C:
			if err := sw.comment(); err != nil {
				f.cut(r, err)
			}
		case <-f.closing:
			f.end(r, sw, "shutdown", "This instance is shutting down: reconnect with the last event id.")
			return
		case <-ctx.Done():
			return
		}
	}
}

// state reads how far the feed's recording has got, for a feed resumed
// from a cursor (and a HEAD): ErrFeedNotReady while nothing records. The
// request timeout bounds the look, as it bounds the rows' first one: a
// database that is slow is a 503, not a wait.
func (f *Feed) state(ctx context.Context, lim Limits) (store.FeedState, error) {
	ctx, cancel := context.WithTimeout(ctx, lim.RequestTimeout)
	defer cancel()
	st, err := f.st.FeedState(ctx)
	if err != nil {
		return st, err
	}
	if !st.SlotReady {
		// Nothing records changes yet: cursor 0 would pass Check, and the
		// changes committed before the slot exists would be missed.
		return st, store.ErrFeedNotReady
	}
	return st, nil
}

// answerHead answers a HEAD of the feed: the status and headers a GET would get,
// and no stream. It takes no feed and no export slot (it holds nothing
// open), but is refused as a GET would be when none is free; without a
// cursor it reads the feed's state, not the rows, whose first one could
// only fail as the state's look does.
func (f *Feed) answerHead(log *slog.Logger, w http.ResponseWriter, r *http.Request, cursor int64, resume bool, lim Limits, exports chan struct{}) {
	var err error
	switch {
	case len(f.slots) == cap(f.slots):
		err = errTooManyFeeds
	case !resume && len(exports) == cap(exports):
		err = errTooManyExports
	default:
		var st store.FeedState
		st, err = f.state(r.Context(), lim)
		if err == nil && resume {
			err = st.Check(cursor)
		}
	}
	if err != nil {
		respond(log, w, r, err)
		return
	}
	setFeedHeaders(w.Header())
	w.WriteHeader(http.StatusOK)
}

// end sends the final event, saying why the feed ends, and returns.
func (f *Feed) end(r *http.Request, sw *sseWriter, reason, detail string) {
	b := append(sw.buf(), `{"reason":`...)
	b = appendJSONString(b, reason)
	b = append(b, `,"detail":`...)
	b = appendJSONString(b, detail)
	b = append(b, '}')
	if err := sw.event("end", "", b); err == nil {
		_ = sw.flush()
	}
}

// cut aborts a feed whose response has begun: the client sees the stream
// break and reconnects.
func (f *Feed) cut(r *http.Request, err error) {
	if r.Context().Err() == nil {
		logError(f.log, r, http.StatusOK, err)
	}
	panic(http.ErrAbortHandler)
}

// appendChange appends a change's data: the row, its id for a delete,
// nothing for a truncate.
func appendChange(b []byte, c store.Change) []byte {
	switch c.Kind {
	case store.KindDelete:
		b = append(b, `{"id":`...)
		b = strconv.AppendInt(b, int64(c.Row.ID), 10)
		return append(b, '}')
	case store.KindTruncate:
		return append(b, "{}"...)
	}
	return appendTest(b, c.Row)
}

// sseWriter writes Server-Sent Events through one buffer, each write to
// the connection under a fresh write deadline.
type sseWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	bw      *bufio.Writer
	timeout time.Duration
	started bool
	scratch []byte
}

func (s *sseWriter) start() {
	s.started = true
	setFeedHeaders(s.w.Header())
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.timeout))
	s.w.WriteHeader(http.StatusOK)
	// EventSource waits this long before it reconnects.
	_, _ = s.bw.WriteString("retry: 1000\n\n")
}

// setFeedHeaders sets the headers of a feed's answer.
func setFeedHeaders(h http.Header) {
	h.Set("Content-Type", mediaEventStream+"; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// Proxies such as nginx buffer responses unless told not to.
	h.Set("X-Accel-Buffering", "no")
}

// buf returns an empty scratch buffer for one event's data.
func (s *sseWriter) buf() []byte { return s.scratch[:0] }

// event writes one event. data is one line of JSON (it holds no raw line
// break: JSON escapes them).
func (s *sseWriter) event(kind, id string, data []byte) error {
	s.scratch = data[:0]
	if id != "" {
		_, _ = s.bw.WriteString("id: " + id + "\n")
	}
	_, _ = s.bw.WriteString("event: " + kind + "\ndata: ")
	_, _ = s.bw.Write(data)
	_, _ = s.bw.WriteString("\n\n")
	if s.bw.Buffered() >= streamFlushBytes/2 {
		return s.flush()
	}
	return nil
}

// comment writes a heartbeat, an SSE comment that clients ignore.
func (s *sseWriter) comment() error {
	_, _ = s.bw.WriteString(": heartbeat\n\n")
	return s.flush()
}

func (s *sseWriter) flush() error {
	if s.bw.Buffered() == 0 {
		return nil
	}
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.timeout))
	if err := s.bw.Flush(); err != nil {
		return err
	}
	return s.rc.Flush()
}
