package main_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/ybrest/testsapi/internal/dbtest"
)

// TestDatabaseRestart crashes the database under a running service: while
// it is down every request that needs it answers 503 quickly, and when it
// is back the same process serves again, with every acknowledged row kept.
func TestDatabaseRestart(t *testing.T) {
	t.Parallel()
	const requestTimeout = 3 * time.Second
	db := dbtest.NewServer(t)
	p := startReady(t, db.URL(), "REQUEST_TIMEOUT="+requestTimeout.String(), "DB_CONNECT_TIMEOUT=1s")

	before := map[string]int32{}
	for i := range 10 {
		name := fmt.Sprintf("before-crash-%d", i)
		before[name] = mustCreate(t, p, name).ID
	}

	db.Stop(t)
	// Several rounds: the first meets the pool's connections dying, the
	// later ones find nothing to connect to.
	var slowest time.Duration
	for round := range 5 {
		for _, req := range []struct{ method, path, body string }{
			{http.MethodPost, "/tests", nameBody(fmt.Sprintf("during-crash-%d", round))},
			{http.MethodGet, "/tests", ""},
			{http.MethodGet, "/tests/1", ""},
		} {
			what := fmt.Sprintf("round %d: %s %s with the database down", round, req.method, req.path)
			began := time.Now()
			r := p.mustDo(t, req.method, req.path, req.body)
			took := time.Since(began)
			if took > requestTimeout+2*time.Second {
				t.Errorf("%s: took %s, REQUEST_TIMEOUT is %s", what, took, requestTimeout)
			}
			slowest = max(slowest, took)
			checkUnavailable(t, what, r)
		}
	}
	if r := p.mustDo(t, http.MethodGet, "/healthz", ""); r.status != http.StatusOK {
		t.Errorf("GET /healthz with the database down: %d %s, want 200", r.status, r.body)
	}

	db.Start(t)
	started := time.Now()
	for i := 0; ; i++ {
		r := p.mustDo(t, http.MethodPost, "/tests", nameBody(fmt.Sprintf("after-restart-%d", i)))
		if r.status == http.StatusCreated {
			decodeTest(t, r)
			break
		}
		checkUnavailable(t, "POST /tests just after the database restarted", r)
		if time.Since(started) > 5*time.Second {
			t.Fatalf("no 201 within 5s of the database's restart")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if p.hasExited() {
		t.Fatalf("server exited: %s", p.cmd.ProcessState)
	}

	t.Logf("15 requests with the database down: 503 each, the slowest in %s; first 201 %s after the restart",
		slowest.Round(time.Millisecond), time.Since(started).Round(time.Millisecond))
	checkAcknowledged(t, db.URL(), before)
}

// TestDatabaseCrashUnderLoad crashes the database (an immediate stop, no
// clean shutdown) while clients keep creating rows, and starts it again 2 s
// later. Every 201 must be in the table with the id it reported; every
// other answer must be a 503 with Retry-After (never a 500, never a dropped
// connection); and writes must succeed again within 5 s of the restart.
func TestDatabaseCrashUnderLoad(t *testing.T) {
	t.Parallel()
	const (
		workers       = 8
		downFor       = 2 * time.Second
		recoverWithin = 5 * time.Second
	)
	db := dbtest.NewServer(t)
	p := startReady(t, db.URL(), "REQUEST_TIMEOUT=3s", "DB_CONNECT_TIMEOUT=1s", "DB_ACQUIRE_TIMEOUT=1s")

	var (
		mu          sync.Mutex
		created     = map[string]int32{} // every 201: name to its id
		unavailable int
		lastCreated time.Time
	)
	stopLoad := startLoad(t, workers, func(name string) bool {
		r, err := p.do(context.Background(), http.MethodPost, "/tests", nameBody(name))
		if err != nil {
			t.Errorf("POST %q: no complete response: %v", name, err)
			return false
		}
		mu.Lock()
		switch r.status {
		case http.StatusCreated:
			created[name] = decodeTest(t, r).ID
			lastCreated = time.Now()
		default:
			checkUnavailable(t, "POST "+name, r)
			unavailable++
		}
		mu.Unlock()
		if r.status != http.StatusCreated {
			time.Sleep(50 * time.Millisecond) // a client backing off
		}
		return true
	})
	count := func() (int, int, time.Time) {
		mu.Lock()
		defer mu.Unlock()
		return len(created), unavailable, lastCreated
	}

	dbtest.WaitFor(t, "50 rows created before the crash", startWithin, func() bool { n, _, _ := count(); return n >= 50 })
	db.Stop(t)
	crashedAt := time.Now()
	time.Sleep(downFor)
	dbtest.WaitFor(t, "a 503 during the outage", 10*time.Second, func() bool { _, u, _ := count(); return u > 0 })
	db.Start(t)
	restartedAt := time.Now()
	dbtest.WaitFor(t, "a 201 after the restart", recoverWithin, func() bool { _, _, last := count(); return last.After(restartedAt) })
	_, _, firstAfter := count()
	time.Sleep(500 * time.Millisecond) // some load on the recovered database
	stopLoad()
	if p.hasExited() {
		t.Fatalf("server exited: %s", p.cmd.ProcessState)
	}

	rows := checkAcknowledged(t, db.URL(), created)
	n, u, _ := count()
	t.Logf("%d rows acknowledged (%d in the table), %d answers 503; down %s, writes back %s after the restart",
		n, len(rows), u, restartedAt.Sub(crashedAt).Round(time.Millisecond), firstAfter.Sub(restartedAt).Round(time.Millisecond))
}
