package api

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/ybrest/testsapi/internal/store"
)

// Listing bounds for GET /tests.
const (
	defaultLimit = 100
	maxLimit     = 1000
)

// Media types GET /tests can answer with, preferred first.
const (
	mediaJSON   = "application/json"
	mediaNDJSON = "application/x-ndjson"
	mediaCSV    = "text/csv"
	// mediaEventStream is Server-Sent Events, the change feed's (see
	// feed.go; never compressed, see compressAnswers).
	mediaEventStream = "text/event-stream"
	// mediaMergePatch is RFC 7396's JSON merge patch, PATCH's body.
	mediaMergePatch = "application/merge-patch+json"
)

// handleTestsCreate handles POST /tests: 201, 400, 401, 409, 413, 415, 422,
// 503. With an Idempotency-Key the create runs at most once per key (see
// createOnce).
func handleTestsCreate(log *slog.Logger, st testStore, lim Limits, keyTTL time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, err := idempotencyKey(r)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		body, err := readJSONBody(w, r, lim.MaxBodyBytes)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		names, single, err := parseCreate(body, lim.MaxBatch)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		if key != "" {
			createOnce(log, w, r, st, store.KeyedCreate{
				Key:         key,
				Fingerprint: fingerprint(names, single),
				Names:       names,
				TTL:         keyTTL,
				StaleAfter:  lim.RequestTimeout,
			}, single)
			return
		}
		if single {
			t, err := st.Create(r.Context(), names[0])
			if err != nil {
				respond(log, w, r, err)
				return
			}
			writeCreated(w, []store.Test{t}, true)
			return
		}
		ts, err := st.CreateMany(r.Context(), names)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		writeCreated(w, ts, false)
	})
}

// writeCreated answers a create: 201 with the row and its Location for a
// single object, with the rows for an array.
func writeCreated(w http.ResponseWriter, ts []store.Test, single bool) {
	if single {
		w.Header().Set("Location", "/tests/"+strconv.Itoa(int(ts[0].ID)))
		writeRow(w, http.StatusCreated, ts[0])
		return
	}
	bp := getBuffer()
	defer putBuffer(bp)
	*bp = appendPage(*bp, ts)
	writeBody(w, http.StatusCreated, mediaJSON, *bp)
}

// writeRow answers one row as JSON.
func writeRow(w http.ResponseWriter, status int, t store.Test) {
	bp := getBuffer()
	defer putBuffer(bp)
	*bp = appendRow(*bp, t)
	writeBody(w, status, mediaJSON, *bp)
}

// handleTestsGet handles GET /tests/{id}: 200, 304, 400, 404, 503.
func handleTestsGet(log *slog.Logger, st testStore) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := pathID(r)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		t, err := st.Get(r.Context(), id)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		bp := getBuffer()
		defer putBuffer(bp)
		*bp = appendRow(*bp, t)
		writeTagged(w, r, mediaJSON, *bp)
	})
}

// handleTestsRename handles PATCH /tests/{id}: 200, 400, 401, 404, 409,
// 412, 413, 415, 422, 503. The body is a JSON merge patch (RFC 7396) of the
// row: {"name": "New"}, under the same rules as a POST of one row. With
// If-Match the row must still have one of the ETags given (checked under a
// row lock, in the transaction of the rename); with an Idempotency-Key the
// rename runs at most once per key, as a POST does.
func handleTestsRename(log *slog.Logger, st testStore, lim Limits, keyTTL time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := pathID(r)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		key, err := idempotencyKey(r)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		cond, err := ifMatch(r)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		body, err := readBody(w, r, lim.MaxBodyBytes, mediaMergePatch, mediaJSON)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		if first(body) == '[' {
			respond(log, w, r, badRequest(`A PATCH body is one object like {"name": "New"}.`))
			return
		}
		names, _, err := parseCreate(body, 1)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		match := rowMatch(cond)
		if key != "" {
			renameOnce(log, w, r, st, store.KeyedRename{
				Key:         key,
				Fingerprint: renameFingerprint(id, names[0], r.Header.Values("If-Match")),
				ID:          id,
				Name:        names[0],
				Match:       match,
				TTL:         keyTTL,
				StaleAfter:  lim.RequestTimeout,
			})
			return
		}
		t, err := st.Rename(r.Context(), id, names[0], match)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		writeRenamed(w, t)
	})
}

// writeRenamed answers a rename: 200 with the row and its new ETag.
func writeRenamed(w http.ResponseWriter, t store.Test) {
	bp := getBuffer()
	defer putBuffer(bp)
	*bp = appendRow(*bp, t)
	w.Header().Set("ETag", etagOf(*bp))
	writeBody(w, http.StatusOK, mediaJSON, *bp)
}

// handleTestsDelete handles DELETE /tests/{id}: 204, 400, 401, 404, 412,
// 503. With If-Match the row must still have one of the ETags given.
func handleTestsDelete(log *slog.Logger, st testStore) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := pathID(r)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		cond, err := ifMatch(r)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		if err := st.Delete(r.Context(), id, rowMatch(cond)); err != nil {
			respond(log, w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// rowMatch turns an If-Match condition into the store's condition on the
// current row: the ETag its representation has now. Nil stays nil.
func rowMatch(cond func(etag string) bool) store.Match {
	if cond == nil {
		return nil
	}
	return func(cur store.Test) bool {
		return cond(etagOf(appendRow(nil, cur)))
	}
}

// pathID reads the {id} of the path: a 400 unless a positive integer, and
// ErrNotFound for one larger than any id can be.
func pathID(r *http.Request) (int64, error) {
	id, err := parseUint(chi.URLParam(r, "id"))
	if errors.Is(err, strconv.ErrRange) {
		return 0, store.ErrNotFound
	}
	if err != nil || id == 0 {
		return 0, badRequest("The id must be a positive integer.")
	}
	return id, nil
}

// errTooManyExports is the answer past MaxExports: exports, and the rows
// of feeds, each hold a database connection.
var errTooManyExports = &requestError{status: http.StatusServiceUnavailable,
	detail: "Too many exports are running; retry shortly."}

// handleTestsList handles GET /tests: 200, 304, 400, 406, 410, 503. JSON
// answers one keyset page (with its ETag, or a 304); NDJSON and CSV stream
// every row from after on (or limit rows when limit is given) as they come
// from the database; with name, either holds the one row of that name or
// none. text/event-stream is the change feed (feed.go), when feed is set.
func handleTestsList(log *slog.Logger, st testStore, lim Limits, feed *Feed) http.Handler {
	exports := make(chan struct{}, lim.MaxExports)
	offers := []string{mediaJSON, mediaNDJSON, mediaCSV}
	withFeed := append(offers[:len(offers):len(offers)], mediaEventStream)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The answer depends on Accept: caches must key on it. Added to,
		// not set: CORS has put Origin there.
		w.Header().Add("Vary", "Accept")
		feedOn := feed.On()
		media := negotiate(r.Header.Get("Accept"), offers...)
		if feedOn {
			media = negotiate(r.Header.Get("Accept"), withFeed...)
		}
		if media == "" {
			detail := "GET /tests answers application/json, application/x-ndjson or text/csv."
			if feedOn {
				detail = "GET /tests answers application/json, application/x-ndjson, text/csv or text/event-stream."
			} else if quality(r.Header.Get("Accept"), mediaEventStream) > 0 {
				detail += " The change feed (text/event-stream) is off: it needs a database with logical replication (wal_level=logical) and FEED=auto or on."
			}
			respond(log, w, r, &requestError{status: http.StatusNotAcceptable, detail: detail})
			return
		}
		// Unlike URL.Query, ParseQuery reports what it cannot parse, and a
		// repeated parameter is ambiguous: both are 400s, not ignored.
		q, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil || len(q["after"]) > 1 || len(q["limit"]) > 1 || len(q["name"]) > 1 {
			respond(log, w, r, badRequest("The query string is malformed or repeats after, limit or name."))
			return
		}
		after, limit, err := parsePage(q.Get("after"), q.Has("after"), q.Get("limit"), q.Has("limit"))
		if err != nil {
			respond(log, w, r, err)
			return
		}
		// rows reads what the request asks for: every row from after on
		// (up to limit), or with name the one row of that name.
		rows := func(ctx context.Context, fn func(store.Test) error) error {
			return st.Stream(ctx, after, limit, fn)
		}
		name, byName := q.Get("name"), q.Has("name")
		if byName {
			if problems := store.NameProblems(name); problems != nil {
				// No row can have it (the name rule is the column's).
				respond(log, w, r, badRequest(strings.Join(problems, " ")))
				return
			}
			rows = func(ctx context.Context, fn func(store.Test) error) error {
				ts, err := st.FindByName(ctx, name, after)
				for i := 0; err == nil && i < len(ts); i++ {
					err = fn(ts[i])
				}
				return err
			}
		}
		if media == mediaEventStream {
			if byName || q.Has("limit") {
				respond(log, w, r, badRequest("The change feed takes after and cursor, not name or limit."))
				return
			}
			feed.serve(log, w, r, q, after, lim, exports)
			return
		}
		if media != mediaJSON {
			// Each export holds a database connection for as long as the
			// client reads: cap them so slow readers cannot take the pool.
			select {
			case exports <- struct{}{}:
				defer func() { <-exports }()
			default:
				respond(log, w, r, errTooManyExports)
				return
			}
			stream(log, w, r, media, rows, lim)
			return
		}
		if limit == 0 {
			limit = defaultLimit
		}
		ctx, cancel := context.WithTimeout(r.Context(), lim.RequestTimeout)
		defer cancel()
		var ts []store.Test
		if byName {
			ts, err = st.FindByName(ctx, name, after)
		} else {
			ts, err = st.List(ctx, after, limit)
		}
		if err != nil {
			respond(log, w, r, err)
			return
		}
		// The answer depends on Prefer too (RFC 7240 §2).
		w.Header().Add("Vary", "Prefer")
		if kind := countPreference(r); kind != "" {
			if err := writeCount(ctx, w, st, kind, byName, len(ts)); err != nil {
				respond(log, w, r, err)
				return
			}
		}
		if len(ts) == limit && !byName {
			next := "/tests?after=" + strconv.Itoa(int(ts[len(ts)-1].ID)) + "&limit=" + strconv.Itoa(limit)
			w.Header().Set("Link", "<"+next+`>; rel="next"`)
		}
		bp := getBuffer()
		defer putBuffer(bp)
		*bp = appendPage(*bp, ts)
		writeTagged(w, r, mediaJSON, *bp)
	})
}

// parsePage reads the after and limit query parameters; limit 0 means it
// was not given.
func parsePage(afterS string, hasAfter bool, limitS string, hasLimit bool) (after int64, limit int, err error) {
	if hasAfter {
		a, err := parseUint(afterS)
		if err != nil {
			return 0, 0, badRequest("after must be a non-negative integer id.")
		}
		after = a
	}
	if hasLimit {
		l, err := parseUint(limitS)
		if err != nil || l < 1 || l > maxLimit {
			return 0, 0, badRequest("limit must be an integer from 1 to 1000.")
		}
		limit = int(l)
	}
	return after, limit, nil
}

// parseUint accepts only decimal digits (no sign, no spaces) up to MaxInt64.
func parseUint(s string) (int64, error) {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, strconv.ErrSyntax
		}
	}
	n, err := strconv.ParseUint(s, 10, 63)
	if err != nil || n > math.MaxInt64 {
		return 0, strconv.ErrRange
	}
	return int64(n), nil
}

// streamFlushBytes is how much output is buffered between flushes: large
// enough to amortise syscalls, small enough that memory stays flat.
const streamFlushBytes = 32 << 10

// stream writes rows as NDJSON or CSV while they are read, holding one row
// and one buffer at a time. Until the first row arrives the export is
// bounded by the request timeout, like any request; after that by
// lim.ExportStallTimeout between rows from the database (a database that
// went silent mid-export, see stallWatch) and by the write timeout for a
// client that stops reading. Once the status is sent an error can no
// longer be reported as a problem: the connection is then aborted, so the
// client sees a truncated response instead of a short one that looks
// complete.
func stream(log *slog.Logger, w http.ResponseWriter, r *http.Request, media string, rows func(context.Context, func(store.Test) error) error, lim Limits) {
	ctx, span := startExportSpan(r.Context(), media)
	var cut error // why the stream was cut, for the span
	defer func() { span.end(cut) }()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	firstRow := time.AfterFunc(lim.RequestTimeout, cancel)
	defer firstRow.Stop()
	var stall *stallWatch // started with the response

	rc := http.NewResponseController(w)
	bw := bufio.NewWriterSize(w, streamFlushBytes)
	// Bytes reach the connection only here, so each write gets a fresh
	// deadline: a long export is fine, a client that stops reading is not.
	// Mid-stream (more is true) the answer is flushed through to the
	// connection too: compressed, each flush is then a chunk the client
	// can decompress at once, instead of output held in the compressor;
	// at the end, the handler's return finishes the answer.
	flush := func(more bool) error {
		stall.writing(true)
		defer stall.writing(false)
		_ = rc.SetWriteDeadline(time.Now().Add(lim.WriteTimeout))
		if err := bw.Flush(); err != nil || !more {
			return err
		}
		if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return err
		}
		return nil
	}
	format := exportFormats[media]
	started := false // the status and headers are written
	start := func() {
		started = true
		stall = watchStall(lim.exportStallTimeout(), cancel)
		_ = rc.SetWriteDeadline(time.Now().Add(lim.WriteTimeout))
		w.Header().Set("Content-Type", format.contentType)
		_, _ = bw.WriteString(format.header)
		w.WriteHeader(http.StatusOK)
	}
	defer func() { stall.stop() }()
	err := rows(ctx, func(t store.Test) error {
		if !started {
			if !firstRow.Stop() {
				// The timeout fired as the row came: nothing is sent yet,
				// so the client gets the timeout's 503.
				return context.DeadlineExceeded
			}
			start()
			if r.Method == http.MethodHead {
				// The status and headers are known now, and net/http
				// drops a HEAD's body: the rest of the export would be
				// read from the database for nothing.
				return errHeadAnswered
			}
		}
		stall.row()
		span.row()
		// Each line is appended straight into bw's free space, so it is
		// neither allocated nor copied (unless it is longer than the space
		// left, which append then allocates for).
		line := format.appendRow(bw.AvailableBuffer(), t)
		if _, err := bw.Write(line); err != nil {
			return err
		}
		if bw.Buffered() >= streamFlushBytes/2 {
			return flush(true)
		}
		return nil
	})
	if errors.Is(err, errHeadAnswered) {
		err = nil
	}
	if !started {
		if err != nil {
			if ctx.Err() != nil && r.Context().Err() == nil {
				err = fmt.Errorf("no first row within the request timeout: %w", context.DeadlineExceeded)
			}
			cut = err
			respond(log, w, r, err)
			return
		}
		// An empty result, complete even if the timeout fired meanwhile:
		// just the CSV header, or nothing.
		start()
	}
	if err == nil {
		err = flush(false)
	}
	if err != nil {
		if stall.fired() {
			err = fmt.Errorf("export stalled: no row from the database for %s (EXPORT_STALL_TIMEOUT): %w", lim.exportStallTimeout(), err)
		}
		if r.Context().Err() == nil {
			logError(log, r, http.StatusOK, err)
		}
		cut = err
		panic(http.ErrAbortHandler)
	}
}

// errHeadAnswered ends the rows of a HEAD export after its first row.
var errHeadAnswered = errors.New("HEAD answered")

// exportFormat is how an export writes rows in one media type.
type exportFormat struct {
	contentType string
	header      string // written before the first row
	appendRow   func(b []byte, t store.Test) []byte
}

// exportFormats are the export media types of GET /tests, by the media
// type negotiate picked.
var exportFormats = map[string]exportFormat{
	mediaNDJSON: {
		contentType: mediaNDJSON + "; charset=utf-8",
		appendRow:   appendRow,
	},
	mediaCSV: {
		contentType: mediaCSV + "; charset=utf-8; header=present",
		header:      "id,name\r\n",
		appendRow:   appendCSV,
	},
}

// stallWatch cancels an export once no row has come from the database for
// its timeout. Rows only bump a counter (an uncontended atomic add, where
// resetting a timer per row would take the runtime's timer lock each
// time); a timer looks at the counter every eighth of the timeout, so a
// stall is noticed between the timeout and an eighth more
// (BenchmarkExportRows showed no difference beyond the machine's noise). Time spent writing to the client
// is not the database's: a slow reader is the write timeout's business.
// A nil *stallWatch (the response has not started) does nothing.
type stallWatch struct {
	rows    atomic.Int64
	busy    atomic.Bool // writing to the client
	stalled atomic.Bool

	mu       sync.Mutex // the timer's function and stop
	timer    *time.Timer
	stopped  bool
	seen     int64
	progress time.Time
}

func watchStall(d time.Duration, cancel context.CancelFunc) *stallWatch {
	s := &stallWatch{seen: -1, progress: time.Now()}
	every := max(d/8, time.Millisecond)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.timer = time.AfterFunc(every, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.stopped {
			return
		}
		now := time.Now()
		if n := s.rows.Load(); n != s.seen || s.busy.Load() {
			s.seen, s.progress = n, now
		} else if now.Sub(s.progress) >= d {
			s.stalled.Store(true)
			cancel()
			return
		}
		s.timer.Reset(every)
	})
	return s
}

func (s *stallWatch) row() {
	if s != nil {
		s.rows.Add(1)
	}
}

func (s *stallWatch) writing(busy bool) {
	if s != nil {
		s.busy.Store(busy)
		s.rows.Add(1) // a write that ends is progress too
	}
}

// fired reports whether the watch cancelled the export.
func (s *stallWatch) fired() bool { return s != nil && s.stalled.Load() }

func (s *stallWatch) stop() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	s.timer.Stop()
}

// appendCSV appends t as one RFC 4180 record. The name is quoted when it
// holds a comma, a quote, CR or LF, with quotes doubled and every other
// byte kept as stored (encoding/csv would rewrite line breaks inside
// quoted fields, changing the data).
func appendCSV(b []byte, t store.Test) []byte {
	b = strconv.AppendInt(b, int64(t.ID), 10)
	b = append(b, ',')
	if !strings.ContainsAny(t.Name, ",\"\r\n") {
		b = append(b, t.Name...)
		return append(b, "\r\n"...)
	}
	b = append(b, '"')
	b = append(b, strings.ReplaceAll(t.Name, `"`, `""`)...)
	return append(b, "\"\r\n"...)
}
