package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ybrest/testsapi/internal/dbtest"
)

// The database across a network that fails: the service reaches its
// database through a toxiproxy (dbtest.Proxy) while clients keep writing
// and reading, and the proxy swallows everything or delays it past
// REQUEST_TIMEOUT. A client that is still connected must get a 201 or a
// 503 with Retry-After within REQUEST_TIMEOUT (never a 499 or a 500, never
// a hang), /readyz must say 503 within DB_ACQUIRE_TIMEOUT, writes must
// succeed again soon after the fault ends, and no acknowledged row may be
// lost (checked on the database directly, not through the proxy).

// Bounds of the network-fault tests.
const (
	faultRequestTimeout = 3 * time.Second
	faultAcquireTimeout = 1 * time.Second
	faultFor            = 8 * time.Second
	faultWriters        = 16
	// faultMargin is what an answer may take beyond its bound: scheduling
	// on a busy 2-core machine, not another timeout (the shortest other
	// one is a second).
	faultMargin   = 750 * time.Millisecond
	faultRecovery = 5 * time.Second // writes succeed again within this of the fault's end
)

// TestDatabaseBlackhole swallows all traffic to the database for 8 s,
// connections left open, as a host that vanished without a reset does.
func TestDatabaseBlackhole(t *testing.T) {
	t.Parallel()
	runNetFault(t, dbtest.NewSchema(t), func(px *dbtest.Proxy) error { return px.Blackhole() }, (*dbtest.Proxy).Clear, faultRecovery)
}

// TestDatabaseSlow delays every byte to and from the database by 5 s for
// 8 s: a database that answers, but after every request has given up.
func TestDatabaseSlow(t *testing.T) {
	t.Parallel()
	runNetFault(t, dbtest.NewSchema(t), func(px *dbtest.Proxy) error { return px.Latency(5*time.Second, 0) }, (*dbtest.Proxy).Clear, faultRecovery)
}

// TestDatabaseResets resets every connection to the database as soon as
// data passes, for 8 s: a host that restarted, or a firewall that rejects.
// On a server of its own: the proxy opens a connection to PostgreSQL for
// every attempt the pool makes, hundreds a second, and the forks would
// slow every other test on the shared server. Writes then come back later
// than after the other faults (2.8-4.0 s in four runs, the same with the
// keepalive and idle check off): the bound is 10 s.
func TestDatabaseResets(t *testing.T) {
	t.Parallel()
	runNetFault(t, dbtest.NewServer(t).URL(), func(px *dbtest.Proxy) error { return px.ResetPeer() }, (*dbtest.Proxy).Clear, 2*faultRecovery)
}

// TestDatabaseUnreachable closes every connection to the database and
// refuses new ones for 8 s.
func TestDatabaseUnreachable(t *testing.T) {
	t.Parallel()
	runNetFault(t, dbtest.NewSchema(t), func(px *dbtest.Proxy) error { px.Disable(); return nil }, func(px *dbtest.Proxy) {
		if err := px.Enable(); err != nil {
			t.Error(err)
		}
	}, faultRecovery)
}

// faultAnswer is one request and what came of it.
type faultAnswer struct {
	what   string
	sent   time.Time
	took   time.Duration
	status int
	err    error // no complete response
}

// faultLog collects the answers of a network-fault test.
type faultLog struct {
	mu      sync.Mutex
	answers []faultAnswer
	created map[string]int32 // every row a 201 acknowledged: name to id
}

func (l *faultLog) add(a faultAnswer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.answers = append(l.answers, a)
}

func (l *faultLog) ack(rows []test) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range rows {
		l.created[r.Name] = r.ID
	}
}

// firstCreatedAfter is when the first 201 for a request sent after t0
// arrived; zero if none has.
func (l *faultLog) firstCreatedAfter(t0 time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var first time.Time
	for _, a := range l.answers {
		at := a.sent.Add(a.took)
		if a.status == http.StatusCreated && a.sent.After(t0) && (first.IsZero() || at.Before(first)) {
			first = at
		}
	}
	return first
}

func (l *faultLog) acked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.created)
}

// runNetFault runs the service on dbURL through a proxy, loads it with 16 writers
// (single creates, arrays and keyed creates), a reader and a readiness
// probe, injects the fault for faultFor, heals it, and checks every answer;
// a create must succeed again within recovery of the healing.
func runNetFault(t *testing.T, dbURL string, inject func(*dbtest.Proxy) error, heal func(*dbtest.Proxy), recovery time.Duration) {
	px := dbtest.NewProxy(t, dbURL)
	p := startReady(t, px.URL(dbURL), "REQUEST_TIMEOUT="+faultRequestTimeout.String(),
		"DB_ACQUIRE_TIMEOUT="+faultAcquireTimeout.String(), "DB_CONNECT_TIMEOUT=1s")
	log := &faultLog{created: map[string]int32{}}

	// send sends one request and records it; it returns the reply when
	// there is a complete one.
	send := func(what, method, path, body string, header ...string) (reply, bool) {
		sent := time.Now()
		r, err := p.do(context.Background(), method, path, body, header...)
		log.add(faultAnswer{what: what, sent: sent, took: time.Since(sent), status: r.status, err: err})
		return r, err == nil
	}
	stopLoad := startLoad(t, faultWriters, func(name string) bool {
		var w int
		fmt.Sscanf(name, "load-%d-", &w)
		body, header, what := nameBody(name), []string(nil), "POST /tests"
		switch w % 8 {
		case 6:
			body, what = fmt.Sprintf(`[{"name":%q},{"name":%q}]`, name+"-a", name+"-b"), "POST /tests array"
		case 7:
			header, what = []string{"Idempotency-Key", "key-" + name}, "POST /tests keyed"
		}
		r, ok := send(what, http.MethodPost, "/tests", body, header...)
		if !ok {
			return true
		}
		if r.status == http.StatusCreated {
			var rows []test
			if strings.HasPrefix(body, "[") {
				_ = json.Unmarshal(r.body, &rows)
			} else {
				rows = []test{decodeTest(t, r)}
			}
			log.ack(rows)
		} else {
			time.Sleep(50 * time.Millisecond) // a client backing off
		}
		return true
	})
	// One reader and one readiness probe beside the writers.
	stopReads := startLoad(t, 2, func(name string) bool {
		if strings.HasPrefix(name, "load-0-") {
			send("GET /tests", http.MethodGet, "/tests?limit=10", "")
			send("GET /tests/1", http.MethodGet, "/tests/1", "")
		} else {
			send("GET /readyz", http.MethodGet, "/readyz", "")
		}
		time.Sleep(100 * time.Millisecond)
		return true
	})

	dbtest.WaitFor(t, "50 rows created before the fault", startWithin, func() bool { return log.acked() >= 50 })
	faultAt := time.Now()
	if err := inject(px); err != nil {
		t.Fatal(err)
	}
	time.Sleep(faultFor)
	heal(px)
	clearedAt := time.Now()
	dbtest.WaitFor(t, "a 201 for a create sent after the fault ended", recovery,
		func() bool { return !log.firstCreatedAfter(clearedAt).IsZero() })
	recovered := log.firstCreatedAfter(clearedAt)
	time.Sleep(500 * time.Millisecond) // some load on the recovered database
	stopLoad()
	stopReads()
	if p.hasExited() {
		t.Fatalf("server exited: %s", p.cmd.ProcessState)
	}

	// Every answer, during the fault or not, is one a live client may get.
	statuses := map[string]map[int]int{}
	var slowest time.Duration
	for _, a := range log.answers {
		if a.err != nil {
			t.Errorf("%s sent %s after the fault began: no complete response: %v", a.what, a.sent.Sub(faultAt), a.err)
			continue
		}
		if statuses[a.what] == nil {
			statuses[a.what] = map[int]int{}
		}
		statuses[a.what][a.status]++
		ok, bound := false, faultRequestTimeout
		switch a.what {
		case "GET /readyz":
			ok, bound = a.status == http.StatusOK || a.status == http.StatusServiceUnavailable, faultAcquireTimeout
		case "GET /tests", "GET /tests/1":
			ok = a.status == http.StatusOK || a.status == http.StatusNotFound || a.status == http.StatusServiceUnavailable
		default:
			ok = a.status == http.StatusCreated || a.status == http.StatusServiceUnavailable
		}
		if !ok {
			t.Errorf("%s sent %s after the fault began: %d", a.what, a.sent.Sub(faultAt).Round(time.Millisecond), a.status)
		}
		if a.took > bound+faultMargin {
			t.Errorf("%s sent %s after the fault began: %d after %s, want at most %s",
				a.what, a.sent.Sub(faultAt).Round(time.Millisecond), a.status, a.took.Round(time.Millisecond), bound+faultMargin)
		}
		slowest = max(slowest, a.took)
	}
	// While the fault lasts, readiness says no: every probe sent after the
	// first acquire timeout of the fault until its end is a 503.
	var readyDuring []string
	for _, a := range log.answers {
		if a.what == "GET /readyz" && a.err == nil && a.sent.After(faultAt.Add(faultAcquireTimeout+faultMargin)) &&
			a.sent.Add(a.took).Before(clearedAt) {
			readyDuring = append(readyDuring, fmt.Sprint(a.status))
			if a.status != http.StatusServiceUnavailable {
				t.Errorf("GET /readyz sent %s into the fault: %d, want 503", a.sent.Sub(faultAt).Round(time.Millisecond), a.status)
			}
		}
	}
	if len(readyDuring) == 0 {
		t.Errorf("no GET /readyz answered during the fault")
	}

	rows := checkAcknowledged(t, dbURL, log.created)
	var summary []string
	for what, byStatus := range statuses {
		summary = append(summary, fmt.Sprintf("%s %v", what, byStatus))
	}
	sort.Strings(summary)
	t.Logf("%d rows acknowledged (%d in the table); answers: %s; slowest answer %s; %d readiness probes during the fault, all 503; first 201 %s after the fault ended",
		len(log.created), len(rows), strings.Join(summary, "; "), slowest.Round(time.Millisecond),
		len(readyDuring), recovered.Sub(clearedAt).Round(time.Millisecond))
}

// TestDatabaseVanishedIdle: the database host vanishes (a blackhole) while
// the service is idle. With no request, the pool's idle connections are
// gone within DB_IDLE_PING plus DB_ACQUIRE_TIMEOUT (the metrics say so),
// /readyz answers 503 within DB_ACQUIRE_TIMEOUT, and once the network is
// back the service is ready again by itself.
func TestDatabaseVanishedIdle(t *testing.T) {
	t.Parallel()
	const (
		idlePing = time.Second
		acquire  = time.Second
		idle     = 3
	)
	dbURL := dbtest.NewSchema(t)
	px := dbtest.NewProxy(t, dbURL)
	p := startReady(t, px.URL(dbURL), "DB_IDLE_PING="+idlePing.String(), "DB_ACQUIRE_TIMEOUT="+acquire.String(),
		"DB_MIN_CONNS="+fmt.Sprint(idle), "DB_CONNECT_TIMEOUT=1s", "DB_TCP_KEEPALIVE=1s", "DB_TCP_USER_TIMEOUT=2s")
	metric := func(name string) string {
		r := p.mustDo(t, http.MethodGet, "/metrics", "")
		for line := range strings.SplitSeq(string(r.body), "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				return v
			}
		}
		t.Fatalf("no %s in /metrics:\n%s", name, r.body)
		return ""
	}
	var before int
	dbtest.WaitFor(t, fmt.Sprintf("%d idle connections", idle), startWithin, func() bool {
		before, _ = strconv.Atoi(metric("testsapi_db_pool_idle_conns"))
		return before >= idle
	})

	if err := px.Blackhole(); err != nil {
		t.Fatal(err)
	}
	faultAt := time.Now()
	// Idle ones being pinged count as acquired: the pool's total says
	// when they are gone.
	dbtest.WaitFor(t, "no connection left in the pool", idlePing+acquire+faultMargin, func() bool {
		return metric("testsapi_db_pool_total_conns") == "0"
	})
	gone := time.Since(faultAt)
	began := time.Now()
	r := p.mustDo(t, http.MethodGet, "/readyz", "")
	readyTook := time.Since(began)
	checkUnavailable(t, "GET /readyz with the database gone", r)
	if readyTook > acquire+faultMargin {
		t.Errorf("GET /readyz with the database gone took %s, want at most %s", readyTook, acquire+faultMargin)
	}

	px.Clear()
	clearedAt := time.Now()
	p.waitReady(t, faultRecovery)
	t.Logf("%d idle connections gone %s after the blackhole began (DB_IDLE_PING %s, DB_ACQUIRE_TIMEOUT %s); /readyz 503 in %s; ready %s after the network came back",
		before, gone.Round(time.Millisecond), idlePing, acquire, readyTook.Round(time.Millisecond), time.Since(clearedAt).Round(time.Millisecond))
}
