package api_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/api"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// faultFeed is the feed configuration of the fault tests: a poll is cut
// after 200 ms, and a feed waits 1.5 s for the database before it ends.
func faultFeed() api.FeedConfig {
	cfg := testFeed
	cfg.PollTimeout = 200 * time.Millisecond
	cfg.Unavailable = 1500 * time.Millisecond
	return cfg
}

// proxiedFeed is an instance whose store reaches the database through a
// fault proxy, while its consumer, and the test's own pool (db), go
// straight to it: the feed's connections can be blackholed while the
// changes go on being made and recorded (what a consumer does on a hung
// connection is not these tests' business). Once direct is set, the
// store's new connections go straight to the database too, and only
// those already open stay behind the proxy.
type proxiedFeed struct {
	*feedService
	px     *dbtest.Proxy
	db     *pgxpool.Pool
	direct atomic.Bool
}

func mustProxiedFeed(t *testing.T, cfg api.FeedConfig) *proxiedFeed {
	t.Helper()
	dbURL, slot := dbtest.NewLogicalSchema(t)
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	host, portText, err := net.SplitHostPort(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		t.Fatal(err)
	}
	p := &proxiedFeed{px: dbtest.NewProxy(t, dbURL), db: mustPool(t, dbURL, nil)}
	pool := mustPool(t, p.px.URL(dbURL), func(c *pgxpool.Config) {
		c.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error {
			if p.direct.Load() {
				cc.Host, cc.Port = host, uint16(port)
			}
			return nil
		}
	})
	p.feedService = mustFeedOnPool(t, pool, dbURL, slot, cfg, nil, false)
	p.rec = store.New(p.db, store.OnChanges(p.feed.Notify))
	if _, _, err := p.rec.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	p.consume(t)
	// First of the cleanups: the connections cut while blackholed close
	// at once rather than after pgx's 15 s drain, which the pool waits for.
	t.Cleanup(p.px.Clear)
	return p
}

// insert commits a row through the test's own pool, never the proxy.
func (p *proxiedFeed) insert(t *testing.T, name string) {
	t.Helper()
	if _, err := p.db.Exec(t.Context(), `INSERT INTO test (name) VALUES ($1)`, name); err != nil {
		t.Fatal(err)
	}
}

// endReason returns the reason of an end event, failing on any other.
func endReason(t *testing.T, ev event) string {
	t.Helper()
	var why struct{ Reason, Detail string }
	if ev.Kind != "end" || json.Unmarshal([]byte(ev.Data), &why) != nil {
		t.Fatalf("got %+v, want an end event", ev)
	}
	return why.Reason
}

// TestFeedDatabaseBlackhole: the feed's database connections go silent
// (a blackhole: data swallowed, connections left open, new ones too)
// while a client follows the feed. The client gets an end event with
// reason unavailable within Unavailable (plus the poll that was cut, and
// a margin), not heartbeats for ever; once the network is back, the
// client resumed from its last id gets every change, those committed
// during the outage included, none skipped or repeated.
func TestFeedDatabaseBlackhole(t *testing.T) {
	cfg := faultFeed()
	cfg.Heartbeat = 200 * time.Millisecond // heartbeats alone must not pass for a live feed
	p := mustProxiedFeed(t, cfg)
	feed := connect(t, p.srv.URL, "")
	feed.expect(t, `ready {}`)
	p.insert(t, "before")
	got := feed.expect(t, `create {"id":1,"name":"before"} #`)
	last := got[0].ID

	if err := p.px.Blackhole(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, name := range []string{"during1", "during2"} {
		p.insert(t, name) // recorded by the consumer, which is not behind the proxy
	}
	// Any event but the end (a create sent over a hung database) fails.
	end := feed.nextWithin(t, cfg.Unavailable+cfg.PollTimeout+time.Second)
	took := time.Since(start)
	if r := endReason(t, end); r != "unavailable" {
		t.Fatalf("end reason %q, want unavailable", r)
	}
	if err := <-feed.done; err != nil {
		t.Fatalf("the stream after the end event: %v, want EOF", err)
	}
	t.Logf("end event (unavailable) %s after the blackhole began (Unavailable %s, PollTimeout %s)",
		took.Round(time.Millisecond), cfg.Unavailable, cfg.PollTimeout)

	p.px.Clear()
	// As EventSource does: reconnect with the last id until it is a 200
	// (the connections cut during the outage may still be closing).
	var again *sse
	dbtest.WaitFor(t, "a resumed feed answered 200 after the network came back", 10*time.Second, func() bool {
		again = connect(t, p.srv.URL, "", "Last-Event-ID", last)
		if again.res.StatusCode == http.StatusOK {
			return true
		}
		again.res.Body.Close()
		return false
	})
	again.expect(t, `create {"id":2,"name":"during1"} #`, `create {"id":3,"name":"during2"} #`)
	p.insert(t, "after")
	again.expect(t, `create {"id":4,"name":"after"} #`)
	again.quiet(t, 300*time.Millisecond)
}

// TestFeedPollHangs: the pooled connections the tail polls on hang (a
// blackhole on each connection open when it began), while the database
// answers new connections. A hung poll is cut after PollTimeout and the
// next tick polls again, on another connection: the connected feed goes
// on, with the change committed meanwhile, and is not ended.
func TestFeedPollHangs(t *testing.T) {
	cfg := faultFeed()
	cfg.Unavailable = 10 * time.Second // only a poll hangs: the feed must not end
	p := mustProxiedFeed(t, cfg)
	feed := connect(t, p.srv.URL, "")
	feed.expect(t, `ready {}`)
	p.insert(t, "before")
	feed.expect(t, `create {"id":1,"name":"before"} #`)

	p.direct.Store(true)
	if err := p.px.Blackhole(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p.insert(t, "during")
	// Each connection the pool held is cut once, a PollTimeout each: well
	// within 5 s. Without the cut, the first hung poll waits for ever.
	ev := feed.nextWithin(t, 5*time.Second)
	if ev.Kind != "create" || ev.Data != `{"id":2,"name":"during"}` || ev.ID == "" {
		t.Fatalf("with the tail's connections hung: %+v, want the create, and no end", ev)
	}
	if d := time.Since(start); d > cfg.Unavailable {
		t.Fatalf("the create came %s after the connections hung, not before Unavailable (%s)", d, cfg.Unavailable)
	} else {
		t.Logf("the create came %s after the tail's connections hung (PollTimeout %s)", d.Round(time.Millisecond), cfg.PollTimeout)
	}
	feed.quiet(t, 300*time.Millisecond)
}

// TestFeedCatchUpReadHangs: a feed resumed from an old cursor reads its
// first pages itself; while test_changes is locked its read gets no
// answer. The feed ends with reason unavailable within Unavailable (and a
// margin), instead of waiting as long as the lock is held.
func TestFeedCatchUpReadHangs(t *testing.T) {
	cfg := faultFeed()
	s := mustFeedService(t, cfg)
	s.exec(t, `INSERT INTO test (name) VALUES ('a'), ('b')`)
	s.waitRecorded(t, 2)
	s.lock(t, "test_changes") // the resume's look reads test_changes_state, which stays free
	start := time.Now()
	feed := connect(t, s.srv.URL, "?cursor=0")
	if feed.res.StatusCode != http.StatusOK {
		t.Fatalf("resumed from 0: %d", feed.res.StatusCode)
	}
	end := feed.nextWithin(t, cfg.Unavailable+time.Second)
	if r := endReason(t, end); r != "unavailable" {
		t.Fatalf("end reason %q, want unavailable", r)
	}
	t.Logf("end event (unavailable) %s after the resume (Unavailable %s)", time.Since(start).Round(time.Millisecond), cfg.Unavailable)
}
