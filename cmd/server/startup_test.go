package main_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ybrest/testsapi/internal/dbtest"
)

// TestInstancesStartTogether starts several replicas at once on one empty
// schema, as a deployment does: they race to create the table, and all must
// come up and serve the same rows.
func TestInstancesStartTogether(t *testing.T) {
	t.Parallel()
	const n = 4
	dbURL := dbtest.NewSchema(t)
	procs := make([]*proc, n)
	for i := range procs {
		procs[i] = start(t, "DATABASE_URL="+dbURL)
	}
	for i, p := range procs {
		p.waitListening(t)
		p.waitLog(t, "database ready", 1, startWithin)
		if r := p.mustDo(t, http.MethodGet, "/readyz", ""); r.status != http.StatusOK {
			t.Fatalf("instance %d: GET /readyz: %d %s, want 200", i, r.status, r.body)
		}
	}

	var want []string
	for i, p := range procs {
		name := fmt.Sprintf("instance-%d", i)
		mustCreate(t, p, name)
		want = append(want, name)
	}
	for i, p := range procs {
		r := p.mustDo(t, http.MethodGet, "/tests", "")
		if r.status != http.StatusOK {
			t.Fatalf("instance %d: GET /tests: %d %s, want 200", i, r.status, r.body)
		}
		var rows []test
		if err := json.Unmarshal(r.body, &rows); err != nil {
			t.Fatalf("instance %d: GET /tests body %q: %v", i, r.body, err)
		}
		var got []string
		for _, row := range rows {
			got = append(got, row.Name)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("instance %d: GET /tests lists %q, want %q", i, got, want)
		}
	}
}

// TestStartsBeforeDatabase starts the service while its database is down,
// as happens when both start together: it must serve liveness at once,
// report not ready, keep retrying, and become ready when the database comes.
func TestStartsBeforeDatabase(t *testing.T) {
	t.Parallel()
	db := dbtest.NewServer(t)
	db.Stop(t)
	p := startServer(t, "DATABASE_URL="+db.URL(), "STARTUP_TIMEOUT=60s", "DB_CONNECT_TIMEOUT=1s")

	p.waitLog(t, "database not ready, retrying", 2, startWithin)
	if r := p.mustDo(t, http.MethodGet, "/healthz", ""); r.status != http.StatusOK {
		t.Errorf("GET /healthz with the database down: %d %s, want 200", r.status, r.body)
	}
	checkUnavailable(t, "GET /readyz with the database down", p.mustDo(t, http.MethodGet, "/readyz", ""))
	checkUnavailable(t, "POST /tests with the database down", p.mustDo(t, http.MethodPost, "/tests", nameBody("early")))

	db.Start(t)
	started := time.Now()
	p.waitReady(t, 15*time.Second)
	mustCreate(t, p, "after-start")
	t.Logf("ready and writing %s after the database started", time.Since(started).Round(time.Millisecond))
	if p.hasExited() {
		t.Fatalf("server exited: %s", p.cmd.ProcessState)
	}
}

// TestStartupGivesUp points the service at a port where nothing listens: it
// must give up after STARTUP_TIMEOUT, exit non-zero and say why.
func TestStartupGivesUp(t *testing.T) {
	t.Parallel()
	dbURL := fmt.Sprintf("postgres://app@127.0.0.1:%d/app?sslmode=disable", closedPort(t))
	p := start(t, "DATABASE_URL="+dbURL, "STARTUP_TIMEOUT=2s", "DB_CONNECT_TIMEOUT=1s")

	code := p.waitExit(t, 10*time.Second)
	if code == 0 {
		t.Errorf("exit code 0, want non-zero")
	}
	// The last attempt runs at the deadline, which cuts it short: the
	// message keeps the cause an earlier attempt met instead, and says
	// what to do.
	stderr := p.stderr.text()
	for _, want := range []string{
		"database not reachable within STARTUP_TIMEOUT (2s): database unavailable: failed to connect",
		"connect: connection refused",
		"start it (the YugabyteDB of docker-compose.yml: docker compose up -d yugabytedb) or set DATABASE_URL to a database that runs",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr does not say %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "deadline exceeded") {
		t.Errorf("stderr gives the deadline as the cause:\n%s", stderr)
	}
	// It did try, rather than fail on the first refusal.
	p.waitLog(t, "database not ready, retrying", 2, time.Second)
}
