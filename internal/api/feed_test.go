package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/api"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// testFeed is the feed configuration of the tests: quick polls and
// heartbeats, and a small MaxLag so that a slow client is cheap to make.
var testFeed = api.FeedConfig{MaxFeeds: 4, Heartbeat: 5 * time.Second, MaxLag: 1000, Poll: 20 * time.Millisecond}

// feedReadTimeout is the test servers' read timeout, short so that
// TestFeedLimits/OutlivesReadTimeout is quick.
const feedReadTimeout = time.Second

// feedService is one instance of the service with the change feed: the
// real router over a real store on a logical-replication server, behind a
// real HTTP server, with its consumer and tail running.
type feedService struct {
	srv  *httptest.Server
	st   *store.Store
	rec  *store.Store // the consumer's: st, unless a test keeps it out of a fault
	pool *pgxpool.Pool
	feed *api.Feed
	repl *pgconn.Config
	slot string

	mu           sync.Mutex
	stopConsumer func()
	stopTail     func()
}

// mustFeedService starts an instance on a fresh logical schema, consumer
// streaming before it returns.
func mustFeedService(t testing.TB, cfg api.FeedConfig) *feedService {
	t.Helper()
	url, slot := dbtest.NewLogicalSchema(t)
	return mustFeedInstance(t, url, slot, cfg, nil, true)
}

// mustFeedInstance starts an instance on url's schema with slot; listen,
// when not nil, is the server's listener. With consume it waits until its
// consumer streams.
func mustFeedInstance(t testing.TB, url, slot string, cfg api.FeedConfig, listen net.Listener, consume bool, opts ...api.Option) *feedService {
	t.Helper()
	return mustFeedOnPool(t, mustPool(t, url, nil), url, slot, cfg, listen, consume, opts...)
}

// mustFeedOnPool is mustFeedInstance with the instance's store on pool,
// which may reach url's database another way (through a fault proxy);
// the consumer connects to url itself.
func mustFeedOnPool(t testing.TB, pool *pgxpool.Pool, url, slot string, cfg api.FeedConfig, listen net.Listener, consume bool, opts ...api.Option) *feedService {
	t.Helper()
	s := &feedService{pool: pool, slot: slot}
	s.st = store.New(pool, store.OnChanges(func() { s.feed.Notify() }))
	s.rec = s.st
	if _, _, err := s.st.Migrate(context.Background()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	s.feed = api.NewFeed(slog.New(slog.DiscardHandler), s.st, cfg)
	var err error
	if s.repl, err = pgconn.ParseConfig(url); err != nil {
		t.Fatal(err)
	}
	h := api.NewHandler(slog.New(slog.DiscardHandler), s.st, testLimits, append(opts, api.WithFeed(s.feed))...)
	s.srv = httptest.NewUnstartedServer(h)
	if listen != nil {
		s.srv.Listener.Close()
		s.srv.Listener = listen
	}
	s.srv.Config.RegisterOnShutdown(s.feed.Shutdown)
	// As cmd/server has READ_TIMEOUT: a feed must outlive it (net/http
	// bounds only the reading of the request with it; the feed must not
	// set a read deadline of its own).
	s.srv.Config.ReadTimeout = feedReadTimeout
	s.srv.Start()
	t.Cleanup(s.close)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.feed.Run(ctx) }()
	s.stopTail = func() { cancel(); <-done }
	if consume {
		s.consume(t)
	}
	return s
}

// consume starts the instance's consumer and waits until it streams.
func (s *feedService) consume(t testing.TB) {
	t.Helper()
	select {
	case <-s.standBy():
	case <-time.After(30 * time.Second):
		t.Fatalf("consumer of %s not streaming within 30 s", s.slot)
	}
}

// standBy starts the instance's consumer, which retries every 100 ms
// while another holds the slot; the channel gets a value once it streams.
func (s *feedService) standBy() <-chan struct{} {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	started := make(chan struct{}, 1)
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			_ = s.rec.ConsumeChanges(ctx, s.repl, s.slot, func() { started <- struct{}{} })
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	s.mu.Lock()
	s.stopConsumer = func() { cancel(); <-done }
	s.mu.Unlock()
	return started
}

// stop stops the consumer, if it runs.
func (s *feedService) stop() {
	s.mu.Lock()
	stop := s.stopConsumer
	s.stopConsumer = nil
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// close shuts the instance down as cmd/server does: feeds told to end,
// then the consumer and the tail stopped.
func (s *feedService) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.srv.Config.Shutdown(ctx)
	s.srv.Close()
	s.stop()
	if s.stopTail != nil {
		s.stopTail()
		s.stopTail = nil
	}
}

func (s *feedService) exec(t testing.TB, sqls ...string) {
	t.Helper()
	for _, q := range sqls {
		if _, err := s.pool.Exec(t.Context(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// lock locks table until the test ends: the statements that read it
// wait.
func (s *feedService) lock(t testing.TB, table string) {
	t.Helper()
	tx, err := s.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	if _, err := tx.Exec(t.Context(), "LOCK TABLE "+table+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
}

// waitRecorded waits until the consumer has recorded n changes.
func (s *feedService) waitRecorded(t testing.TB, n int64) {
	t.Helper()
	dbtest.WaitFor(t, "changes recorded", 20*time.Second, func() bool {
		st, err := s.st.FeedState(t.Context())
		return err == nil && st.LastSeq >= n
	})
}

// event is one Server-Sent Event, or a comment (Kind ":").
type event struct {
	ID   string
	Kind string
	Data string
}

// sse is a connected feed: its events, as they come.
type sse struct {
	res    *http.Response
	events chan event
	done   chan error // the stream's end: nil for EOF
}

// connect opens a feed on s with the given headers (name, value pairs)
// and, when it is a 200, reads its events in the background.
func connect(t testing.TB, base, query string, header ...string) *sse {
	t.Helper()
	return connectWith(t, http.DefaultClient, base, query, header...)
}

func connectWith(t testing.TB, c *http.Client, base, query string, header ...string) *sse {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/tests"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET /tests%s: %v", query, err)
	}
	s := &sse{res: res, events: make(chan event), done: make(chan error, 1)}
	t.Cleanup(func() {
		cancel()
		res.Body.Close()
	})
	if res.StatusCode != http.StatusOK {
		return s
	}
	go func() {
		sc := bufio.NewScanner(res.Body)
		var ev event
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.Kind != "" {
					s.events <- ev
				}
				ev = event{}
			case strings.HasPrefix(line, ":"):
				s.events <- event{Kind: ":", Data: line}
			case strings.HasPrefix(line, "id: "):
				ev.ID = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.Kind = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.Data = line[6:]
			}
		}
		s.done <- sc.Err()
		close(s.events)
	}()
	return s
}

// next returns the next event that is not a comment, failing the test if
// none comes within 20 s.
func (s *sse) next(t testing.TB) event {
	t.Helper()
	return s.nextWithin(t, 20*time.Second)
}

// nextWithin is next with a bound of d, which heartbeats do not put off.
func (s *sse) nextWithin(t testing.TB, d time.Duration) event {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				t.Fatalf("the feed ended (%v) while an event was expected", <-s.done)
			}
			if ev.Kind == ":" {
				continue
			}
			return ev
		case <-deadline:
			t.Fatalf("no event within %s", d)
		}
	}
}

// quiet checks that no event (comments aside) comes within d.
func (s *sse) quiet(t testing.TB, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				return
			}
			if ev.Kind != ":" {
				t.Fatalf("unexpected event %+v", ev)
			}
		case <-deadline:
			return
		}
	}
}

// expect reads len(want) events and compares their kind and data ("kind
// data"); an id is checked to be present (want ending in " #") or absent.
func (s *sse) expect(t testing.TB, want ...string) []event {
	t.Helper()
	var got []event
	for _, w := range want {
		ev := s.next(t)
		got = append(got, ev)
		wantID := strings.HasSuffix(w, " #")
		w = strings.TrimSuffix(w, " #")
		if ev.Kind+" "+ev.Data != w || (ev.ID != "") != wantID {
			t.Fatalf("event %+v, want %q (id: %v); so far %+v", ev, w, wantID, got)
		}
	}
	return got
}

// TestFeedRowsThenChanges: a feed without a cursor sends the rows (from
// after on), then ready, then each change, made through the API or by
// plain SQL, as it commits, each with an id; rolled-back work never comes.
func TestFeedRowsThenChanges(t *testing.T) {
	s := mustFeedService(t, testFeed)
	s.exec(t, `INSERT INTO test (id, name) VALUES (1, 'one'), (2, 'two'), (3, 'three')`)
	feed := connect(t, s.srv.URL, "?after=1")
	if feed.res.StatusCode != http.StatusOK {
		t.Fatalf("status %d", feed.res.StatusCode)
	}
	if ct := feed.res.Header.Get("Content-Type"); ct != "text/event-stream; charset=utf-8" {
		t.Fatalf("Content-Type %q", ct)
	}
	feed.expect(t, `row {"id":2,"name":"two"}`, `row {"id":3,"name":"three"}`, `ready {}`)

	post(t, s.srv.URL, `{"name":"four"}`)
	tx, err := s.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(t.Context(), `INSERT INTO test (name) VALUES ('rolled back')`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	s.exec(t, `UPDATE test SET name = 'uno' WHERE id = 1`, `DELETE FROM test WHERE id = 2`)
	evs := feed.expect(t, `create {"id":4,"name":"four"} #`, `rename {"id":1,"name":"uno"} #`, `delete {"id":2} #`)
	for i := 1; i < len(evs); i++ {
		a, _ := strconv.Atoi(evs[i-1].ID)
		b, _ := strconv.Atoi(evs[i].ID)
		if b <= a {
			t.Fatalf("ids not ascending: %+v", evs)
		}
	}
	feed.quiet(t, 300*time.Millisecond)
}

// post creates rows through the API over HTTP.
func post(t *testing.T, base, body string) {
	t.Helper()
	res, err := http.Post(base+"/tests", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("POST %s: %d", body, res.StatusCode)
	}
}

// TestFeedOutOfOrderCommit: a transaction that took the lower id but
// commits after a higher id's is delivered too, after it: the feed is in
// commit order, which a poller of ?after=max(id) would have skipped.
func TestFeedOutOfOrderCommit(t *testing.T) {
	s := mustFeedService(t, testFeed)
	feed := connect(t, s.srv.URL, "")
	feed.expect(t, `ready {}`)
	low, err := s.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer low.Rollback(context.Background())
	if _, err := low.Exec(t.Context(), `INSERT INTO test (name) VALUES ('low')`); err != nil {
		t.Fatal(err)
	}
	post(t, s.srv.URL, `{"name":"high"}`)
	feed.expect(t, `create {"id":2,"name":"high"} #`)
	if err := low.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	feed.expect(t, `create {"id":1,"name":"low"} #`)
}

// TestFeedSnapshotOverlap: rows the feed's read already showed, whose
// changes the consumer records only afterwards (it was behind), are not
// sent again; the next change is, and resuming from its id repeats
// nothing.
func TestFeedSnapshotOverlap(t *testing.T) {
	s := mustFeedService(t, testFeed)
	s.stop() // the recording falls behind
	s.exec(t, `INSERT INTO test (name) VALUES ('x')`)
	feed := connect(t, s.srv.URL, "")
	feed.expect(t, `row {"id":1,"name":"x"}`, `ready {}`)
	s.consume(t)
	s.exec(t, `INSERT INTO test (name) VALUES ('y')`)
	got := feed.expect(t, `create {"id":2,"name":"y"} #`)
	feed.quiet(t, 300*time.Millisecond)

	again := connect(t, s.srv.URL, "", "Last-Event-ID", got[0].ID)
	s.exec(t, `INSERT INTO test (name) VALUES ('z')`)
	again.expect(t, `create {"id":3,"name":"z"} #`)
	again.quiet(t, 300*time.Millisecond)
}

// TestFeedResume: from every cursor, by Last-Event-ID or the cursor
// parameter, a feed sends exactly the changes after it, in order; bad,
// unknown and purged cursors are refused with a problem.
func TestFeedResume(t *testing.T) {
	s := mustFeedService(t, testFeed)
	first := connect(t, s.srv.URL, "")
	first.expect(t, `ready {}`)
	s.exec(t, `INSERT INTO test (name) VALUES ('a')`, `INSERT INTO test (name) VALUES ('b')`,
		`UPDATE test SET name = 'c' WHERE id = 1`, `DELETE FROM test WHERE id = 2`)
	all := first.expect(t, `create {"id":1,"name":"a"} #`, `create {"id":2,"name":"b"} #`,
		`rename {"id":1,"name":"c"} #`, `delete {"id":2} #`)

	cursors := []string{"0"}
	for _, ev := range all {
		cursors = append(cursors, ev.ID)
	}
	for i, c := range cursors {
		for _, how := range []string{"header", "param"} {
			t.Run(how+"_"+c, func(t *testing.T) {
				var feed *sse
				if how == "header" {
					feed = connect(t, s.srv.URL, "", "Last-Event-ID", c)
				} else {
					feed = connect(t, s.srv.URL, "?cursor="+c)
				}
				if feed.res.StatusCode != http.StatusOK {
					t.Fatalf("status %d", feed.res.StatusCode)
				}
				for _, want := range all[i:] {
					if got := feed.next(t); got != want {
						t.Fatalf("got %+v, want %+v", got, want)
					}
				}
				feed.quiet(t, 200*time.Millisecond)
			})
		}
	}

	h := s.srv.Config.Handler
	sseAccept := []string{"Accept", "text/event-stream"}
	for _, tc := range []struct {
		name   string
		target string
		header []string
		status int
	}{
		{"NotANumber", "/tests", []string{"Last-Event-ID", "abc"}, http.StatusBadRequest},
		{"Negative", "/tests?cursor=-1", nil, http.StatusBadRequest},
		{"Disagree", "/tests?cursor=1", []string{"Last-Event-ID", "2"}, http.StatusBadRequest},
		{"Twice", "/tests?cursor=1&cursor=1", nil, http.StatusBadRequest},
		{"Beyond", "/tests?cursor=99", nil, http.StatusBadRequest},
		{"WithLimit", "/tests?limit=5", nil, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := do(t, h, http.MethodGet, tc.target, "", append(sseAccept, tc.header...)...)
			if res.status != tc.status {
				t.Fatalf("status %d, want %d: %s", res.status, tc.status, res.body)
			}
		})
	}

	t.Run("Purged", func(t *testing.T) {
		s.exec(t, `UPDATE test_changes SET committed_at = now() - interval '2 days'`)
		if _, err := s.st.PurgeChanges(t.Context(), 24*time.Hour); err != nil {
			t.Fatal(err)
		}
		for _, c := range cursors[:len(cursors)-1] {
			res := do(t, h, http.MethodGet, "/tests?cursor="+c, "", sseAccept...)
			if res.status != http.StatusGone {
				t.Fatalf("cursor %s after the purge: %d, want 410: %s", c, res.status, res.body)
			}
			var p struct{ Detail string }
			res.json(t, &p)
			if !strings.Contains(p.Detail, "read the table again") {
				t.Fatalf("410 detail %q does not say what to do", p.Detail)
			}
		}
		// The newest cursor has nothing missing after it.
		last := connect(t, s.srv.URL, "?cursor="+cursors[len(cursors)-1])
		if last.res.StatusCode != http.StatusOK {
			t.Fatalf("the newest cursor after the purge: %d", last.res.StatusCode)
		}
	})
}

// TestFeedResumeDatabaseSlow: a feed resumed from a cursor while the
// database does not answer (here the feed's state table is locked) is a
// 503 with Retry-After within the request timeout, not a wait without end.
func TestFeedResumeDatabaseSlow(t *testing.T) {
	s := mustFeedService(t, testFeed)
	s.lock(t, "test_changes_state")
	ctx, cancel := context.WithCancel(t.Context())
	req := newRequest(http.MethodGet, "/tests", "", "Accept", "text/event-stream", "Last-Event-ID", "0").WithContext(ctx)
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() { defer close(done); s.srv.Config.Handler.ServeHTTP(rec, req) }()
	select {
	case <-done:
		cancel()
		if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" {
			t.Fatalf("resumed while the database does not answer: %d (Retry-After %q) %s, want 503 with Retry-After",
				rec.Code, rec.Header().Get("Retry-After"), rec.Body)
		}
	case <-time.After(testLimits.RequestTimeout + 5*time.Second):
		cancel() // the client leaves, so the handler returns
		<-done
		t.Fatalf("no answer within the request timeout (%s) and 5 s", testLimits.RequestTimeout)
	}
}

// TestFeedResumeNotReady: before any consumer has made the slot, a feed
// resumed from cursor 0 is a 503, as one without a cursor is: nothing
// records the changes yet, so it would miss those committed until then.
func TestFeedResumeNotReady(t *testing.T) {
	url, slot := dbtest.NewLogicalSchema(t)
	s := mustFeedInstance(t, url, slot, testFeed, nil, false)
	for _, query := range []string{"", "?cursor=0"} {
		res := connect(t, s.srv.URL, query).res
		if res.StatusCode != http.StatusServiceUnavailable || res.Header.Get("Retry-After") == "" {
			t.Fatalf("GET /tests%s before the slot exists: %d (Retry-After %q), want 503 with Retry-After",
				query, res.StatusCode, res.Header.Get("Retry-After"))
		}
	}
}

// TestFeedLimits: past MaxFeeds a feed is a 503 with Retry-After; an idle
// feed gets heartbeats; a handler without the feed says it is off.
func TestFeedLimits(t *testing.T) {
	cfg := testFeed
	cfg.MaxFeeds = 1
	cfg.Heartbeat = 50 * time.Millisecond
	s := mustFeedService(t, cfg)
	feed := connect(t, s.srv.URL, "")
	feed.expect(t, `ready {}`)

	t.Run("Cap", func(t *testing.T) {
		res := do(t, s.srv.Config.Handler, http.MethodGet, "/tests", "", "Accept", "text/event-stream")
		if res.status != http.StatusServiceUnavailable || res.header.Get("Retry-After") == "" {
			t.Fatalf("a second feed: %d (Retry-After %q), want 503 with Retry-After", res.status, res.header.Get("Retry-After"))
		}
	})
	t.Run("Heartbeat", func(t *testing.T) {
		select {
		case ev := <-feed.events:
			if ev.Kind != ":" || ev.Data != ": heartbeat" {
				t.Fatalf("got %+v, want a heartbeat comment", ev)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no heartbeat within 5 s")
		}
	})
	t.Run("OutlivesReadTimeout", func(t *testing.T) {
		until := time.Now().Add(feedReadTimeout + 500*time.Millisecond)
		for time.Now().Before(until) {
			select {
			case _, ok := <-feed.events:
				if !ok {
					t.Fatalf("the feed ended before the read timeout (%s) had long passed: %v", feedReadTimeout, <-feed.done)
				}
			case <-time.After(time.Second):
				t.Fatal("no heartbeat within 1 s")
			}
		}
		post(t, s.srv.URL, `{"name":"late"}`)
		for {
			if ev := feed.next(t); ev.Kind == "create" {
				break
			}
		}
	})
	t.Run("Off", func(t *testing.T) {
		e := mustEnv(t)
		res := do(t, e.h, http.MethodGet, "/tests", "", "Accept", "text/event-stream")
		if res.status != http.StatusNotAcceptable || !strings.Contains(string(res.body), "change feed") {
			t.Fatalf("without the feed: %d %s, want a 406 that says the feed is off", res.status, res.body)
		}
	})
}

// head sends a HEAD of /tests through base's HTTP server, Accept
// text/event-stream and header (name, value pairs); it must answer at
// once, without a body: a HEAD that streamed would time out.
func head(t *testing.T, base, query string, header ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodHead, base+"/tests"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("HEAD /tests%s: %v", query, err)
	}
	res.Body.Close()
	return res
}

// TestFeedHead: a HEAD of the feed answers the status and headers a GET
// would (the feed's headers for a 200; the problem's status and
// Retry-After for 400, 406, 410 and 503), ends at once, and holds no
// feed open: with MaxFeeds 1, a feed connects after it, and then the
// HEAD is refused as a second GET is.
func TestFeedHead(t *testing.T) {
	cfg := testFeed
	cfg.MaxFeeds = 1
	s := mustFeedService(t, cfg)
	s.exec(t, `INSERT INTO test (name) VALUES ('a')`, `INSERT INTO test (name) VALUES ('b')`)
	s.waitRecorded(t, 2)
	h := s.srv.Config.Handler
	sseAccept := []string{"Accept", "text/event-stream"}
	// same checks that a HEAD got the status and the headers that matter
	// of a GET's answer (a GET that is not a 200 ends, so it can be asked).
	same := func(t *testing.T, query string, header []string, status int) {
		t.Helper()
		res := head(t, s.srv.URL, query, header...)
		get := do(t, h, http.MethodGet, "/tests"+query, "", append(sseAccept, header...)...)
		if get.status != status {
			t.Fatalf("GET: %d, want %d: %s", get.status, status, get.body)
		}
		if res.StatusCode != status {
			t.Fatalf("HEAD: %d, want %d as GET", res.StatusCode, status)
		}
		for _, k := range []string{"Content-Type", "Retry-After", "Vary"} {
			if res.Header.Get(k) != get.header.Get(k) {
				t.Fatalf("HEAD %s %q, GET %q", k, res.Header.Get(k), get.header.Get(k))
			}
		}
	}
	for _, query := range []string{"", "?after=1", "?cursor=1"} {
		t.Run("OK"+query, func(t *testing.T) {
			res := head(t, s.srv.URL, query)
			if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" ||
				res.Header.Get("Cache-Control") != "no-store" || res.Header.Get("X-Accel-Buffering") != "no" {
				t.Fatalf("HEAD: %d %v, want 200 with a feed's headers", res.StatusCode, res.Header)
			}
		})
	}
	t.Run("MalformedCursor", func(t *testing.T) { same(t, "", []string{"Last-Event-ID", "abc"}, http.StatusBadRequest) })
	t.Run("CursorBeyond", func(t *testing.T) { same(t, "?cursor=99", nil, http.StatusBadRequest) })
	t.Run("WithLimit", func(t *testing.T) { same(t, "?limit=5", nil, http.StatusBadRequest) })
	t.Run("Cap", func(t *testing.T) {
		// The HEADs above held no feed: the one slot is free.
		feed := connect(t, s.srv.URL, "")
		feed.expect(t, `row {"id":1,"name":"a"}`, `row {"id":2,"name":"b"}`, `ready {}`)
		same(t, "", nil, http.StatusServiceUnavailable)
		same(t, "?cursor=1", nil, http.StatusServiceUnavailable)
		feed.res.Body.Close()
		dbtest.WaitFor(t, "the feed's slot freed", 5*time.Second, func() bool {
			return head(t, s.srv.URL, "").StatusCode == http.StatusOK
		})
	})
	t.Run("CursorGone", func(t *testing.T) {
		s.exec(t, `UPDATE test_changes SET committed_at = now() - interval '2 days'`)
		if _, err := s.st.PurgeChanges(t.Context(), 24*time.Hour); err != nil {
			t.Fatal(err)
		}
		same(t, "?cursor=1", nil, http.StatusGone)
		// Without a cursor the floor does not matter.
		if res := head(t, s.srv.URL, ""); res.StatusCode != http.StatusOK {
			t.Fatalf("HEAD without a cursor after the purge: %d, want 200", res.StatusCode)
		}
	})
	t.Run("NotReady", func(t *testing.T) {
		url, slot := dbtest.NewLogicalSchema(t)
		idle := mustFeedInstance(t, url, slot, testFeed, nil, false) // no consumer: no slot
		for _, query := range []string{"", "?cursor=0"} {
			res := head(t, idle.srv.URL, query)
			get := do(t, idle.srv.Config.Handler, http.MethodGet, "/tests"+query, "", sseAccept...)
			if res.StatusCode != http.StatusServiceUnavailable || get.status != res.StatusCode ||
				res.Header.Get("Retry-After") == "" {
				t.Fatalf("before the slot exists, HEAD /tests%s: %d (Retry-After %q), GET %d; want 503 with Retry-After for both",
					query, res.StatusCode, res.Header.Get("Retry-After"), get.status)
			}
		}
	})
	t.Run("Off", func(t *testing.T) {
		srv := httptest.NewServer(mustEnv(t).h)
		defer srv.Close()
		res := head(t, srv.URL, "")
		if res.StatusCode != http.StatusNotAcceptable {
			t.Fatalf("HEAD without the feed: %d, want 406 as GET", res.StatusCode)
		}
	})
}

// TestFeedSlowConsumer: a client that stops reading while the table
// changes falls behind; once the server can write again it sends the
// end event saying why, instead of buffering the changes, and the client
// resumes from its last id with nothing lost or repeated.
func TestFeedSlowConsumer(t *testing.T) {
	cfg := testFeed
	cfg.MaxLag = 100
	// Small socket buffers on both sides, so that a client that does not
	// read blocks the server's writes after a few kilobytes.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url, slot := dbtest.NewLogicalSchema(t)
	s := mustFeedInstance(t, url, slot, cfg, smallBuffers{ln}, true)
	client := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return errors.Join(err, serr)
	}}).DialContext}}

	feed := connectWith(t, client, s.srv.URL, "")
	// Read the ready event by hand, then stop reading.
	feed.expect(t, `ready {}`)
	const n = 3000
	s.exec(t, fmt.Sprintf(`INSERT INTO test (name) SELECT repeat('x', 200) || g FROM generate_series(1, %d) g`, n))
	s.waitRecorded(t, n)
	time.Sleep(500 * time.Millisecond) // the server writes until its buffers are full

	seen := map[string]bool{}
	var last string
	var end event
	for end.Kind == "" {
		ev := feed.next(t)
		switch ev.Kind {
		case "create":
			seen[ev.Data] = true
			last = ev.ID
		case "end":
			end = ev
		default:
			t.Fatalf("unexpected %+v", ev)
		}
	}
	var why struct{ Reason, Detail string }
	if err := json.Unmarshal([]byte(end.Data), &why); err != nil || why.Reason != "behind" {
		t.Fatalf("end event %+v, want reason behind", end)
	}
	if len(seen) >= n {
		t.Fatalf("the slow client got all %d changes before its end event", len(seen))
	}
	if err := <-feed.done; err != nil {
		t.Fatalf("the stream after the end event: %v, want EOF", err)
	}
	again := connect(t, s.srv.URL, "", "Last-Event-ID", last)
	for len(seen) < n {
		ev := again.next(t)
		if ev.Kind != "create" || seen[ev.Data] {
			t.Fatalf("after resuming: %+v (repeat: %v)", ev, seen[ev.Data])
		}
		seen[ev.Data] = true
	}
	again.quiet(t, 200*time.Millisecond)
}

// smallBuffers is a listener whose connections have a small send buffer.
type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, err
}

// TestFeedTwoInstances: two instances share the table and the slot; one
// records, and a feed on the other follows its changes. When the
// recording instance stops, the other takes the slot over, and its feed
// goes on with every change, none repeated or skipped; a feed that was on
// the stopped instance ends with reason shutdown and resumes on the other.
func TestFeedTwoInstances(t *testing.T) {
	url, slot := dbtest.NewLogicalSchema(t)
	a := mustFeedInstance(t, url, slot, testFeed, nil, true)
	b := mustFeedInstance(t, url, slot, testFeed, nil, false)
	took := b.standBy() // the slot is a's
	onB := connect(t, b.srv.URL, "")
	onB.expect(t, `ready {}`)
	onA := connect(t, a.srv.URL, "")
	onA.expect(t, `ready {}`)
	post(t, a.srv.URL, `{"name":"1"}`)
	post(t, b.srv.URL, `{"name":"2"}`)
	onB.expect(t, `create {"id":1,"name":"1"} #`, `create {"id":2,"name":"2"} #`)
	got := onA.expect(t, `create {"id":1,"name":"1"} #`, `create {"id":2,"name":"2"} #`)

	select {
	case <-took:
		t.Fatal("b streams the slot a holds")
	default:
	}
	a.close() // ends a's feeds, stops its consumer
	end := onA.next(t)
	if end.Kind != "end" || !strings.Contains(end.Data, `"shutdown"`) {
		t.Fatalf("the feed on the stopped instance: %+v, want an end event for the shutdown", end)
	}
	select {
	case <-took:
	case <-time.After(30 * time.Second):
		t.Fatal("b did not take the slot over within 30 s")
	}
	post(t, b.srv.URL, `{"name":"3"}`)
	onB.expect(t, `create {"id":3,"name":"3"} #`)
	moved := connect(t, b.srv.URL, "", "Last-Event-ID", got[1].ID)
	moved.expect(t, `create {"id":3,"name":"3"} #`)
	onB.quiet(t, 200*time.Millisecond)
}

// eventSourcePage runs the README's EventSource example against API, then
// posts a row from the page once the feed is ready, and when that row's
// create event has come writes the example's copy of the table and its
// cursor into <pre id="out">.
const eventSourcePage = `<!doctype html>
<html><body><pre id="out">running</pre>
<script>
EXAMPLE
feed.addEventListener("ready", () => {
  fetch("API/tests", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({name: "from the browser"})});
});
feed.addEventListener("create", (e) => {
  if (JSON.parse(e.data).name !== "from the browser") return;
  feed.close();
  document.getElementById("out").textContent = JSON.stringify({rows: Object.fromEntries(rows), cursor});
});
</script></body></html>`

// readmeEventSource returns the README's EventSource example.
func readmeEventSource(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- eventsource-example -->\n```js\n")
	code, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 || !strings.Contains(code, `new EventSource("http://localhost:8080/tests")`) {
		t.Fatal("README.md has no EventSource example after <!-- eventsource-example -->")
	}
	return code
}

// TestEventSourceInChromium runs the README's EventSource example in
// headless Chromium, from another origin: it gets the rows, then the
// change its page makes, and ends with a copy equal to the table and the
// change's id as its cursor.
func TestEventSourceInChromium(t *testing.T) {
	t.Parallel()
	url, slot := dbtest.NewLogicalSchema(t)
	var apiURL string
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		code := strings.ReplaceAll(readmeEventSource(t), "http://localhost:8080", apiURL)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(strings.NewReplacer("EXAMPLE", code, "API", apiURL).Replace(eventSourcePage)))
	}))
	t.Cleanup(page.Close)
	s := mustFeedInstance(t, url, slot, testFeed, nil, true, api.CORS([]string{page.URL}))
	apiURL = s.srv.URL
	s.exec(t, `INSERT INTO test (name) VALUES ('first'), ('second')`)

	dom, log := dumpDOM(t, page.URL+"/")
	start := strings.Index(dom, `<pre id="out">`)
	end := strings.Index(dom, `</pre>`)
	if start < 0 || end < start {
		t.Fatalf("no output in the DOM: %.1000s\n%s", dom, lastLines(log, 20))
	}
	var got struct {
		Rows   map[string]string
		Cursor string
	}
	text := html.UnescapeString(dom[start+len(`<pre id="out">`) : end])
	if err := json.Unmarshal([]byte(text), &got); err != nil {
		t.Fatalf("page output %q: %v\n%s", text, err, lastLines(log, 20))
	}
	want := map[string]string{"1": "first", "2": "second", "3": "from the browser"}
	if fmt.Sprint(got.Rows) != fmt.Sprint(want) || got.Cursor == "" {
		t.Fatalf("the example's copy %v, cursor %q; want %v and the create's id", got.Rows, got.Cursor, want)
	}
	st, err := s.st.FeedState(t.Context())
	if err != nil || strconv.FormatInt(st.LastSeq, 10) != got.Cursor {
		t.Fatalf("cursor %q, last change %d (%v)", got.Cursor, st.LastSeq, err)
	}
}

// feedLoad has writers goroutines POST each single creates (group commit)
// through s's HTTP server while a feed follows; it returns how long the
// POSTs took and how long until the feed had every create, and fails
// unless the feed delivered each created row exactly once.
func feedLoad(t testing.TB, s *feedService, writers, each int) (posts, delivered time.Duration) {
	t.Helper()
	feed := connect(t, s.srv.URL, "")
	feed.expect(t, `ready {}`)
	total := writers * each
	seen := make(map[string]bool, total)
	got := make(chan time.Duration, 1)
	start := time.Now()
	go func() {
		for len(seen) < total {
			ev, ok := <-feed.events
			if !ok {
				break
			}
			if ev.Kind == "create" {
				if seen[ev.Data] {
					t.Errorf("create %s delivered twice", ev.Data)
				}
				seen[ev.Data] = true
			}
		}
		got <- time.Since(start)
	}()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: writers}}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				res, err := client.Post(s.srv.URL+"/tests", "application/json", strings.NewReader(fmt.Sprintf(`{"name":"w%d-%d"}`, w, i)))
				if err != nil {
					t.Errorf("POST: %v", err)
					return
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusCreated {
					t.Errorf("POST: %d", res.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	posts = time.Since(start)
	select {
	case delivered = <-got:
	case <-time.After(60 * time.Second):
		t.Fatalf("the feed had %d of %d creates 60 s after the POSTs ended", len(seen), total)
	}
	if len(seen) != total {
		t.Fatalf("the feed delivered %d distinct creates of %d", len(seen), total)
	}
	return posts, delivered
}

// TestFeedUnderLoad: 8 writers' 2,000 single creates (group-committed in
// batches) all reach a feed, each once. Bounded in count; how fast is
// BenchmarkFeedKeepsUp's business.
func TestFeedUnderLoad(t *testing.T) {
	s := mustFeedService(t, testFeed)
	feedLoad(t, s, 8, 250)
}

// BenchmarkFeedKeepsUp measures whether the feed keeps up with the
// group-commit POST rate: 16 writers POST 500 single creates each through
// a real HTTP server (as bench/'s create workload) while one feed follows.
// posts/s is the POST rate, events/s the rate at which the feed had them
// all (from the same start), catchup-ms how long after the last POST's
// answer the feed had its create:
//
//	go test -run '^$' -bench FeedKeepsUp -benchtime 3x ./internal/api
func BenchmarkFeedKeepsUp(b *testing.B) {
	cfg := testFeed
	cfg.Poll = 100 * time.Millisecond // the default FEED_POLL
	cfg.MaxLag = 100000               // the default FEED_MAX_LAG
	const writers, each = 16, 500
	var posts, delivered time.Duration
	for b.Loop() {
		b.StopTimer()
		s := mustFeedService(b, cfg)
		b.StartTimer()
		p, d := feedLoad(b, s, writers, each)
		posts += p
		delivered += d
		b.StopTimer()
		s.close()
		b.StartTimer()
	}
	n := float64(b.N * writers * each)
	b.ReportMetric(n/posts.Seconds(), "posts/s")
	b.ReportMetric(n/delivered.Seconds(), "events/s")
	b.ReportMetric(float64((delivered-posts).Milliseconds())/float64(b.N), "catchup-ms")
}
