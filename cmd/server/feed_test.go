package main_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	neturl "net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ybrest/testsapi/internal/dbtest"
)

// mirror is what a feed client keeps: a copy of the table built from the
// events alone, and the last id it saw.
type mirror struct {
	rows map[int]string
	last string
}

// follow reads a feed's events into m until the feed ends or until stop
// reports true after an event; it returns the end event's data ("" if the
// stream ended without one) and fails on a repeated create.
func (m *mirror) follow(t *testing.T, body *bufio.Scanner, stop func() bool) (end string) {
	t.Helper()
	var id, kind string
	for body.Scan() {
		line := body.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			id = line[4:]
		case strings.HasPrefix(line, "event: "):
			kind = line[7:]
		case strings.HasPrefix(line, "data: "):
			var row struct {
				ID   int
				Name string
			}
			data := line[6:]
			if err := json.Unmarshal([]byte(data), &row); err != nil {
				t.Fatalf("event data %q: %v", data, err)
			}
			switch kind {
			case "row", "create":
				if _, dup := m.rows[row.ID]; dup {
					t.Fatalf("%s of id %d, which the mirror already has", kind, row.ID)
				}
				m.rows[row.ID] = row.Name
			case "rename":
				m.rows[row.ID] = row.Name
			case "delete":
				delete(m.rows, row.ID)
			case "end":
				return data
			}
			if id != "" {
				m.last = id
			}
			id, kind = "", ""
			if stop() {
				return ""
			}
		}
	}
	return ""
}

// openFeed connects to p's feed, resuming after last when it is not "".
func openFeed(t *testing.T, p *proc, last string) *bufio.Scanner {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url+"/tests", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	if last != "" {
		req.Header.Set("Last-Event-ID", last)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Body.Close() })
	if res.StatusCode != http.StatusOK {
		t.Fatalf("feed: %d", res.StatusCode)
	}
	return bufio.NewScanner(res.Body)
}

// TestFeedAcrossRestarts: a client follows the feed of the binary, which
// is stopped (its feed ends with reason shutdown) while rows change by
// plain SQL, and started again; resuming from its Last-Event-ID the
// client gets exactly what it missed, and its copy ends equal to the
// table. On shutdown the service leaves its slot (the next start resumes
// from it) inactive, and with FEED=off it drops it.
func TestFeedAcrossRestarts(t *testing.T) {
	t.Parallel()
	url, slot := dbtest.NewLogicalSchema(t)
	env := []string{"FEED=on", "FEED_SLOT=" + slot, "FEED_RETRY=200ms"}
	p := startReady(t, url, env...)
	p.waitLog(t, "change feed: recording changes (this instance holds the slot)", 1, startWithin)
	db, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	exec := func(q string) {
		t.Helper()
		if _, err := db.Exec(t.Context(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec(`INSERT INTO test (name) SELECT 'before' || g FROM generate_series(1, 5) g`)

	m := &mirror{rows: map[int]string{}}
	feed := openFeed(t, p, "")
	m.follow(t, feed, func() bool { return len(m.rows) == 5 })
	for i := range 3 {
		if r, err := p.do(t.Context(), http.MethodPost, "/tests", fmt.Sprintf(`{"name":"live%d"}`, i)); err != nil || r.status != http.StatusCreated {
			t.Fatalf("POST: %v %d", err, r.status)
		}
	}
	exec(`UPDATE test SET name = 'renamed' WHERE id = 1`)
	m.follow(t, feed, func() bool { return m.rows[1] == "renamed" })
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if end := m.follow(t, feed, func() bool { return false }); !strings.Contains(end, `"reason":"shutdown"`) {
		t.Fatalf("the feed at shutdown ended with %q, want an end event with reason shutdown", end)
	}
	if code := p.waitExit(t, exitWithin); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	// The database lets go of the slot a moment after the connection closes.
	dbtest.WaitFor(t, "the slot kept, inactive, after shutdown", 10*time.Second, func() bool {
		var active bool
		err := db.QueryRow(t.Context(), `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active)
		return err == nil && !active
	})

	exec(`INSERT INTO test (name) VALUES ('while down')`)
	exec(`DELETE FROM test WHERE id = 2`)
	p = startReady(t, url, env...)
	p.waitLog(t, "change feed: recording changes (this instance holds the slot)", 1, startWithin)
	exec(`INSERT INTO test (name) VALUES ('after')`)
	feed = openFeed(t, p, m.last)
	m.follow(t, feed, func() bool { return m.rows[10] == "after" }) // ids 1-5 before, 6-8 live, 9 while down

	rows, err := db.Query(t.Context(), `SELECT id, name FROM test`)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]string{}
	for rows.Next() {
		var id int
		var name string
		if err := rows.Scan(&id, &name); err != nil {
			t.Fatal(err)
		}
		want[id] = name
	}
	if fmt.Sprint(m.rows) != fmt.Sprint(want) {
		t.Fatalf("the client's copy %v, the table %v", m.rows, want)
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.waitExit(t, exitWithin)
	startReady(t, url, "FEED=off", "FEED_SLOT="+slot)
	dbtest.WaitFor(t, "FEED=off to drop the slot, which would hold WAL for ever", 10*time.Second, func() bool {
		var n int
		err := db.QueryRow(t.Context(), `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&n)
		return err == nil && n == 0
	})
}

// TestFeedConsumerBlackhole: the binary's database connections, its
// consumer's pool and replication connection among them, go silent (a
// toxiproxy blackhole) while rows are committed straight to the database.
// The consumer gives up within 1.5 × REQUEST_TIMEOUT (and a margin): its
// replication connection silent for half of it, then no reply for
// REQUEST_TIMEOUT (and half of wal_sender_timeout, 0 here: with one, the
// server would end the connection itself, and toxiproxy pass the close
// on), or a round trip on its pool unanswered for REQUEST_TIMEOUT,
// whichever it meets first. It logs it and is started again every
// FEED_RETRY; once the network is back it records again, and test_changes
// holds every row's create exactly once, in commit order.
func TestFeedConsumerBlackhole(t *testing.T) {
	t.Parallel()
	const requestTimeout = time.Second
	url, slot := dbtest.NewLogicalSchema(t)
	px := dbtest.NewProxy(t, url)
	t.Cleanup(px.Clear) // the connections cut while blackholed then close at once
	u, err := neturl.Parse(px.URL(url))
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("wal_sender_timeout", "0")
	u.RawQuery = q.Encode()
	p := startReady(t, u.String(), "FEED=on", "FEED_SLOT="+slot, "FEED_RETRY=200ms",
		"REQUEST_TIMEOUT="+requestTimeout.String(), "DB_CONNECT_TIMEOUT=1s")
	const recording = "change feed: recording changes (this instance holds the slot)"
	const stopped = "change feed: consumer stopped, retrying"
	p.waitLog(t, recording, 1, startWithin)
	db, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	insert := func(name string) {
		t.Helper()
		if _, err := db.Exec(t.Context(), `INSERT INTO test (name) VALUES ($1)`, name); err != nil {
			t.Fatal(err)
		}
	}
	recorded := func(n int) {
		t.Helper()
		dbtest.WaitFor(t, fmt.Sprintf("%d changes recorded", n), 20*time.Second, func() bool {
			var got int
			err := db.QueryRow(t.Context(), `SELECT count(*) FROM test_changes`).Scan(&got)
			return err == nil && got >= n
		})
	}
	insert("before1")
	insert("before2")
	recorded(2)

	if err := px.Blackhole(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	insert("during1")
	insert("during2")
	e := p.waitLog(t, stopped, 1, requestTimeout*3/2+2*time.Second)[0]
	t.Logf("%q %s after the blackhole began (REQUEST_TIMEOUT %s): %v", stopped, time.Since(start).Round(time.Millisecond), requestTimeout, e["error"])

	px.Clear()
	cleared := time.Now()
	p.waitLog(t, recording, 2, 20*time.Second)
	insert("after")
	recorded(5)
	t.Logf("recording again %s after the network came back", time.Since(cleared).Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond) // room for a wrong repeat to land
	rows, err := db.Query(t.Context(), `
SELECT c.seq, c.kind, c.id, c.name, t.id
FROM test_changes c
FULL JOIN test t ON t.id = c.id
ORDER BY c.seq, t.id`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var seq, id, rowID *int64
		var kind, name *string
		if err := rows.Scan(&seq, &kind, &id, &name, &rowID); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%v %v %v %v %v", deref(seq), deref(kind), deref(id), deref(name), deref(rowID)))
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	want := []string{
		"1 create 1 before1 1", "2 create 2 before2 2", "3 create 3 during1 3",
		"4 create 4 during2 4", "5 create 5 after 5",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("test_changes joined with test (seq kind id name, row id):\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// deref returns *v, or nil for a nil pointer.
func deref[T any](v *T) any {
	if v == nil {
		return nil
	}
	return *v
}
