package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ybrest/testsapi/internal/dbtest"
)

// TestBlackBox is a client that only sees HTTP, does everything at once and
// trusts nothing: workers create rows with Idempotency-Keys, give up on
// answers that take longer than 800 ms and retry blindly with the same key
// after every timeout, 503 or in-flight 409; meanwhile the database stalls
// (the table locked for 1.5 s, so creates land after their clients gave
// up, then for 3 s, past REQUEST_TIMEOUT), crashes and comes back 2 s
// later, and other clients trickle their headers. At the
// end every acknowledged id is in the table exactly once under its name,
// every key maps to one row and every 201 for a key named the same id, and
// no answer was a 500 or carried anything internal.
func TestBlackBox(t *testing.T) {
	t.Parallel()
	const (
		token         = "blackb0x-t0ken"
		workers       = 6
		perWorker     = 25
		clientTimeout = 800 * time.Millisecond
		giveUp        = 60 * time.Second // on one create, through the outage
		tricklers     = 2
	)
	db := dbtest.NewServer(t)
	p := startReady(t, db.URL(), "API_TOKEN="+token, "REQUEST_TIMEOUT=2s", "DB_CONNECT_TIMEOUT=1s",
		"DB_ACQUIRE_TIMEOUT=1s", "READ_HEADER_TIMEOUT=2s")

	var (
		mu       sync.Mutex
		acked    = map[string]int32{}  // key: the id its 201s named
		names    = map[string]string{} // key: its name
		statuses = map[string]int{}    // what the client saw, by kind
	)
	count := func(kind string) {
		mu.Lock()
		statuses[kind]++
		mu.Unlock()
	}
	// check looks at every complete answer.
	check := func(what string, r reply) {
		checkNoLeak(t, what, r)
		if r.header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: %d without nosniff", what, r.status)
		}
		if r.status == http.StatusInternalServerError {
			t.Errorf("%s: 500 %s", what, r.body)
		}
	}

	// answered judges one complete answer to a create of name: the id of a
	// 201, 0 for an answer to retry after, -1 for a wrong one (reported).
	answered := func(what, name string, r reply) int32 {
		check(what, r)
		switch {
		case r.status == http.StatusCreated:
			var got test
			if err := json.Unmarshal(r.body, &got); err != nil || got.Name != name || got.ID < 1 {
				t.Errorf("%s: 201 body %q (%v)", what, r.body, err)
				return -1
			}
			if loc := r.header.Get("Location"); loc != fmt.Sprintf("/tests/%d", got.ID) {
				t.Errorf("%s: Location %q for id %d", what, loc, got.ID)
			}
			return got.ID
		case r.status == http.StatusServiceUnavailable:
			checkUnavailable(t, what, r)
			count("503")
		case r.status == http.StatusConflict && r.header.Get("Retry-After") != "":
			count("409 key in flight")
		default:
			t.Errorf("%s: %d %s, want 201, 503 or a 409 for a key in flight", what, r.status, r.body)
			return -1
		}
		return 0
	}

	// Requests whose client gave up without closing the connection (as
	// behind a lost network path) run on; their answers come in late.
	var late sync.WaitGroup
	lateIDs := map[string][]int32{}

	// create creates name under key, retrying until it has a 201, and
	// returns the id (0 if the test is failing). An attempt with no answer
	// within clientTimeout is given up: cancelled (the connection closed)
	// or, when abandon is set, left running.
	create := func(key, name string, abandon bool) int32 {
		deadline := time.Now().Add(giveUp)
		gaveUp := false
		for attempt := 1; time.Now().Before(deadline); attempt++ {
			what := fmt.Sprintf("POST %s (key %s, attempt %d)", name, key, attempt)
			ctx, cancel := context.WithTimeout(context.Background(), giveUp)
			done := make(chan error, 1)
			var r reply
			go func() {
				var err error
				r, err = p.do(ctx, http.MethodPost, "/tests", nameBody(name),
					"Authorization", "Bearer "+token, "Idempotency-Key", key)
				cancel()
				done <- err
			}()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s: %v", what, err)
					return 0
				}
			case <-time.After(clientTimeout):
				gaveUp = true
				if !abandon {
					cancel()
					<-done
					count("client gave up, request cancelled")
					continue
				}
				count("client gave up, request left running")
				late.Go(func() {
					if err := <-done; err != nil {
						t.Errorf("%s, abandoned: %v", what, err)
						return
					}
					if id := answered(what+", abandoned", name, r); id > 0 {
						count("201 to an abandoned request")
						mu.Lock()
						lateIDs[key] = append(lateIDs[key], id)
						mu.Unlock()
					}
				})
				continue
			}
			switch id := answered(what, name, r); {
			case id < 0:
				return 0
			case id > 0:
				count(fmt.Sprintf("201 on attempt %d", min(attempt, 3)))
				if gaveUp {
					count("201 after the client gave up on an attempt")
				}
				return id
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("no 201 for %s (key %s) within %s", name, key, giveUp)
		return 0
	}

	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				key := fmt.Sprintf("bb-key-%d-%d", w, i)
				name := fmt.Sprintf("bb-name-%d-%d", w, i)
				abandon := w%2 == 0
				id := create(key, name, abandon)
				if id == 0 {
					return
				}
				mu.Lock()
				acked[key], names[key] = id, name
				mu.Unlock()
				if i%5 == 0 {
					// A client that never saw its answer retries after
					// success too: the replay must name the same id.
					if again := create(key, name, abandon); again != 0 && again != id {
						t.Errorf("key %s: 201 with id %d, then a retry's 201 with id %d", key, id, again)
					}
				}
			}
		})
	}

	cuts := make(chan trickled, tricklers)
	for range tricklers {
		c := dial(t, p, giveUp)
		go func() { cuts <- trickle(c, 100*time.Millisecond) }()
	}

	ackedAtLeast := func(n int) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(acked) >= n
		}
	}
	// stall holds an exclusive lock on table test for d: creates claim
	// their keys, then wait for the table.
	stall := func(t *testing.T, d time.Duration) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		err := pgx.BeginFunc(ctx, mustConn(t, ctx, db.URL()), func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `LOCK TABLE test IN ACCESS EXCLUSIVE MODE`); err != nil {
				return err
			}
			time.Sleep(d)
			return nil
		})
		if err != nil {
			t.Fatalf("stall the table: %v", err)
		}
	}

	// The faults, one after another while the workers run; a fault that
	// fails skips the later ones. Errors in the workers' answers are the
	// whole test's (they say which request): the steps are the faults.
	faults := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"StallPastClientTimeout", func(t *testing.T) {
			dbtest.WaitFor(t, "20 rows acknowledged", startWithin, ackedAtLeast(20))
			stall(t, 1500*time.Millisecond)
		}},
		{"StallPastRequestTimeout", func(t *testing.T) {
			dbtest.WaitFor(t, "40 rows acknowledged", startWithin, ackedAtLeast(40))
			stall(t, 3*time.Second)
		}},
		{"CrashAndRestart", func(t *testing.T) {
			dbtest.WaitFor(t, "60 rows acknowledged", startWithin, ackedAtLeast(60))
			db.Stop(t)
			time.Sleep(2 * time.Second)
			db.Start(t)
		}},
	}
	for _, f := range faults {
		if !t.Run(f.name, f.run) {
			break
		}
	}
	// Every worker and late answer is in before the test can end.
	wg.Wait()
	late.Wait()
	t.Run("TricklersCut", func(t *testing.T) {
		for range tricklers {
			(<-cuts).check(t, giveUp)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("LateAnswersNameTheAcknowledgedID", func(t *testing.T) {
		for key, ids := range lateIDs {
			for _, id := range ids {
				if id != acked[key] {
					t.Errorf("key %s: acknowledged with id %d, but an abandoned attempt's 201 named id %d", key, acked[key], id)
				}
			}
		}
	})

	t.Run("TableMatchesAnswers", func(t *testing.T) {
		// The database's view, read directly.
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		conn := mustConn(t, ctx, db.URL())
		for key, id := range acked {
			var n int
			var gotID int32
			err := conn.QueryRow(ctx, `SELECT count(*), min(id) FROM test WHERE name = $1`, names[key]).Scan(&n, &gotID)
			if err != nil || n != 1 || gotID != id {
				t.Errorf("key %s: %d rows named %s, id %d (%v); want 1 row with the acknowledged id %d", key, n, names[key], gotID, err, id)
			}
			var status int
			var body []byte
			err = conn.QueryRow(ctx, `SELECT status, body FROM idempotency_keys WHERE key = $1`, key).Scan(&status, &body)
			var kept test
			if err == nil {
				err = json.Unmarshal(body, &kept)
			}
			if err != nil || status != http.StatusCreated || kept.ID != id {
				t.Errorf("key %s: kept %d %s (%v); want the 201 with id %d", key, status, body, err, id)
			}
		}
		var rows int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM test`).Scan(&rows); err != nil {
			t.Fatal(err)
		}
		if rows != workers*perWorker || len(acked) != workers*perWorker {
			t.Errorf("%d rows in the table, %d keys acknowledged; want %d of each", rows, len(acked), workers*perWorker)
		}
		var kinds []string
		for k, n := range statuses {
			kinds = append(kinds, fmt.Sprintf("%s: %d", k, n))
		}
		t.Logf("%d creates acknowledged, %d rows; answers seen: %s", len(acked), rows, strings.Join(kinds, ", "))
	})
}

// mustConn connects to databaseURL, closing the connection when the test ends.
func mustConn(t *testing.T, ctx context.Context, databaseURL string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
