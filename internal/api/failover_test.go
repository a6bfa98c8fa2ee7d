package api_test

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ybrest/testsapi/internal/dbtest"
)

// faultSQL makes the real database answer what YugabyteDB answers during
// failover. yb_fault(kind) raises the armed error (SQLSTATE and message)
// for the first `times` statements that reach it (-1: every one), then
// lets them pass; a sequence counts, as it is not rolled back with the
// failed statement. A BEFORE INSERT trigger on test calls it for creates
// ('write'), and a row security policy for every SELECT of test ('read'),
// forced on the table's owner, which the store connects as. A failing
// statement raises at its first row, so it counts once.
const faultSQL = `
CREATE TABLE yb_faults (
    kind    text PRIMARY KEY,
    code    text NOT NULL,
    message text NOT NULL,
    times   integer NOT NULL
);
CREATE SEQUENCE yb_fault_calls;
CREATE FUNCTION yb_fault(k text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    f yb_faults;
BEGIN
    SELECT * INTO f FROM yb_faults WHERE kind = k;
    IF FOUND AND (f.times < 0 OR nextval('yb_fault_calls') <= f.times) THEN
        RAISE EXCEPTION USING ERRCODE = f.code, MESSAGE = f.message;
    END IF;
    RETURN true;
END $$;
CREATE FUNCTION yb_fault_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM yb_fault('write');
    RETURN NEW;
END $$;
CREATE TRIGGER yb_fault BEFORE INSERT ON test FOR EACH ROW EXECUTE FUNCTION yb_fault_write();
ALTER TABLE test ENABLE ROW LEVEL SECURITY;
ALTER TABLE test FORCE ROW LEVEL SECURITY;
CREATE POLICY yb_fault_read ON test FOR SELECT USING (yb_fault('read'));
CREATE POLICY yb_fault_insert ON test FOR INSERT WITH CHECK (true);`

// faultEnv is a service whose database can be made to fail like YugabyteDB.
type faultEnv struct{ *env }

// mustFaultEnv gives the test a service on a fresh schema with faultSQL
// installed. The store connects as a role of its own that owns the table:
// row security never applies to a superuser, which the tests' servers
// give by default.
func mustFaultEnv(t *testing.T) faultEnv {
	t.Helper()
	url := dbtest.NewSchema(t)
	admin := mustPool(t, url, nil)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	schema := pgx.Identifier{cfg.ConnConfig.RuntimeParams["search_path"]}.Sanitize()
	name := "r_" + strings.Trim(schema, `"`)
	role := pgx.Identifier{name}.Sanitize()
	ctx := context.Background()
	stmts := []string{"CREATE ROLE " + role + " LOGIN", "GRANT USAGE, CREATE ON SCHEMA " + schema + " TO " + role}
	if pw := cfg.ConnConfig.Password; pw != "" {
		stmts[0] += " PASSWORD '" + strings.ReplaceAll(pw, "'", "''") + "'"
	}
	for _, q := range stmts {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v (the fault tests need a user that may create roles)", q, err)
		}
	}
	// Registered before the role's pool, so it runs after that closes.
	t.Cleanup(func() {
		for _, q := range []string{"DROP OWNED BY " + role, "DROP ROLE " + role} {
			if _, err := admin.Exec(ctx, q); err != nil {
				t.Errorf("%s: %v", q, err)
			}
		}
	})
	e := mustEnvURL(t, url, testLimits, func(c *pgxpool.Config) { c.ConnConfig.User = name })
	if _, err := e.pool.Exec(ctx, faultSQL); err != nil {
		t.Fatalf("install faults: %v", err)
	}
	return faultEnv{e}
}

// arm makes the next `times` statements of kind ('write' or 'read') fail
// with f (-1: all of them), and nothing else fail.
func (e faultEnv) arm(t *testing.T, kind string, f ybFault, times int) {
	t.Helper()
	ctx := context.Background()
	for _, q := range []string{`DELETE FROM yb_faults`, `SELECT setval('yb_fault_calls', 1, false)`} {
		if _, err := e.pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if kind == "" {
		return
	}
	const q = `INSERT INTO yb_faults (kind, code, message, times) VALUES ($1, $2, $3, $4)`
	if _, err := e.pool.Exec(ctx, q, kind, f.code, f.message, times); err != nil {
		t.Fatal(err)
	}
}

// ybFault is an error YugabyteDB answers, as its issue tracker shows it.
type ybFault struct {
	name, code, message string
	// rolledBack: the error says the transaction did not commit, so even
	// a single create (a write that commits as it ends) is retried.
	rolledBack bool
}

var ybFaults = []ybFault{
	{"TabletNotRunning", "XX000", "Timed out: Read(tablet: 107240348669432882a9d04703b8f796, num_ops: 1, num_attempts: 277, txn: 00000000-0000-0000-0000-000000000000, subtxn: [none]) passed its deadline 1021324.783s (passed: 60.325s): Illegal state (yb/tserver/service_util.h:137): Tablet not RUNNING: FAILED (tablet server error 12) (raft group state error 2)", false}, // yugabyte-db#10517
	{"LeaderNotReady", "XX000", "Timed out: Read(tablet: f286b7fb39dc4cfea4bb4e685b615463, num_ops: 1, num_attempts: 344, txn: 00000000-0000-0000-0000-000000000000) passed its deadline 41127.471s (now: 41127.564s): Leader not ready to serve requests. (yb/consensus/consensus.cc:137): Leader not yet replicated NoOp to be ready to serve requests (error 24)", false},      // #1197
	{"RPCTimeout", "XX000", "Read RPC (request call id 1032805) to 172.151.26.80:9100 timed out after 21.827s", false},                                                                                    // #22096
	{"NetworkError", "XX000", "Network error: recvmsg error: Connection refused", false},                                                                                                                  // #12628
	{"TserverShutdown", "57P01", "terminating connection due to administrator command", false},                                                                                                            // #15455
	{"TxnAborted", "40001", "Operation expired: Heartbeat: Transaction 6db5bfbe-0061-4c2a-aa60-329cd69b0e39 expired or aborted by a conflict", true},                                                      // docs
	{"ReadRestart", "40001", "Restart read required at: { read: { physical: 1656351408684482 } local_limit: { physical: 1656351408684482 } global_limit: <min> in_txn_limit: <max> serial_no: 0 }", true}, // docs
}

// faultRequest is one of the requests every fault is tried on.
type faultRequest struct {
	name                 string
	kind                 string // the statements it runs: 'write' or 'read'
	method, path, accept string
	body                 func(n int) string // n makes names unique
	key                  bool               // sent with an Idempotency-Key
	commits              bool               // its failing statement commits: retried only when rolled back
	ok                   int
}

var faultRequests = []faultRequest{
	{name: "SingleCreate", kind: "write", method: "POST", path: "/tests", ok: http.StatusCreated, commits: true,
		body: func(n int) string { return fmt.Sprintf(`{"name": "single-%d"}`, n) }},
	{name: "ArrayCreate", kind: "write", method: "POST", path: "/tests", ok: http.StatusCreated,
		body: func(n int) string { return fmt.Sprintf(`[{"name": "array-%d-a"}, {"name": "array-%d-b"}]`, n, n) }},
	{name: "KeyedCreate", kind: "write", method: "POST", path: "/tests", ok: http.StatusCreated, key: true,
		body: func(n int) string { return fmt.Sprintf(`{"name": "keyed-%d"}`, n) }},
	{name: "Page", kind: "read", method: "GET", path: "/tests", ok: http.StatusOK},
	{name: "Get", kind: "read", method: "GET", path: "/tests/{id}", ok: http.StatusOK},
	{name: "Export", kind: "read", method: "GET", path: "/tests", accept: "application/x-ndjson", ok: http.StatusOK},
}

// send sends rq; n makes its names and key unique, and {id} in its path
// is the id of a stored row.
func (e faultEnv) send(t *testing.T, rq faultRequest, n int, id int32) response {
	t.Helper()
	var body string
	if rq.body != nil {
		body = rq.body(n)
	}
	header := []string{"Accept", rq.accept}
	if rq.key {
		header = append(header, "Idempotency-Key", fmt.Sprintf("%s-%d", t.Name(), n))
	}
	path := strings.ReplaceAll(rq.path, "{id}", strconv.Itoa(int(id)))
	return do(t, e.h, rq.method, path, body, header...)
}

// TestYugabyteFailover makes the database answer each of YugabyteDB's
// failover errors and sends each kind of request through the router: while
// the error lasts every request is a 503 with Retry-After, never a 500;
// when it fails twice and then passes, the store's retries hide it (a
// 201 or 200) except for a single create, whose insert commits as it ends:
// it is retried only on an error that says it rolled back, and is a 503
// otherwise. Only the rows of the 201s are stored.
func TestYugabyteFailover(t *testing.T) {
	t.Parallel()
	e := mustFaultEnv(t)
	before := mustCreate(t, e.h, "before")[0] // for the reads
	want := []string{"before"}
	n := 0
	for _, f := range ybFaults {
		t.Run(f.name, func(t *testing.T) {
			for _, rq := range faultRequests {
				n++
				e.arm(t, rq.kind, f, -1)
				res := e.send(t, rq, n, before.ID)
				problemOf(t, res, http.StatusServiceUnavailable)
				if res.header.Get("Retry-After") == "" {
					t.Errorf("%s while it lasts: 503 without Retry-After", rq.name)
				}

				n++
				e.arm(t, rq.kind, f, 2)
				res = e.send(t, rq, n, before.ID)
				wantStatus := rq.ok
				if rq.commits && !f.rolledBack {
					wantStatus = http.StatusServiceUnavailable
				}
				if res.status != wantStatus {
					t.Errorf("%s failing twice: %d %s, want %d", rq.name, res.status, res.body, wantStatus)
				}
				if res.status == http.StatusCreated {
					var rows []test
					if strings.HasPrefix(string(res.body), "[") {
						res.json(t, &rows)
					} else {
						rows = make([]test, 1)
						res.json(t, &rows[0])
					}
					for _, r := range rows {
						want = append(want, r.Name)
					}
				}
			}
		})
	}
	e.arm(t, "", ybFault{}, 0)
	if got := tableNames(t, e.pool); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("table holds %q, want the rows of the 201s, %q", got, want)
	}
}

// TestInternalErrorStays500: an XX000 that is not one of YugabyteDB's
// failover messages is a genuine internal error, a 500.
func TestInternalErrorStays500(t *testing.T) {
	t.Parallel()
	e := mustFaultEnv(t)
	before := mustCreate(t, e.h, "before")[0]
	f := ybFault{code: "XX000", message: "cache lookup failed for relation 16384"}
	for i, rq := range faultRequests {
		e.arm(t, rq.kind, f, -1)
		problemOf(t, e.send(t, rq, i, before.ID), http.StatusInternalServerError)
	}
}
