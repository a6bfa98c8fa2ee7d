package main_test

import (
	"fmt"
	"net/http"
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
	for round := range 5 {
		for _, req := range []struct{ method, path, body string }{
			{http.MethodPost, "/tests", nameBody(fmt.Sprintf("during-crash-%d", round))},
			{http.MethodGet, "/tests", ""},
			{http.MethodGet, "/tests/1", ""},
		} {
			what := fmt.Sprintf("round %d: %s %s with the database down", round, req.method, req.path)
			began := time.Now()
			r := p.mustDo(t, req.method, req.path, req.body)
			if took := time.Since(began); took > requestTimeout+2*time.Second {
				t.Errorf("%s: took %s, REQUEST_TIMEOUT is %s", what, took, requestTimeout)
			}
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

	rows := mustRows(t, db.URL())
	for name, id := range before {
		if got, ok := rows[name]; !ok {
			t.Errorf("%q was acknowledged with id %d before the crash but is not in the table", name, id)
		} else if got != id {
			t.Errorf("%q was acknowledged with id %d before the crash but has id %d", name, id, got)
		}
	}
}
