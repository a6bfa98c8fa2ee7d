package api_test

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/ybrest/testsapi/internal/api"
)

const mergePatch = "application/merge-patch+json"

// rename sends PATCH /tests/{id} with a merge patch body and extra headers.
func rename(t *testing.T, h http.Handler, path, body string, header ...string) response {
	t.Helper()
	return do(t, h, "PATCH", path, body, append([]string{"Content-Type", mergePatch}, header...)...)
}

func TestETag(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	mustCreate(t, e.h, "Bob", "Ann")

	t.Run("Row", func(t *testing.T) {
		res := do(t, e.h, "GET", "/tests/1", "")
		etag := res.header.Get("ETag")
		if res.status != http.StatusOK || !strings.HasPrefix(etag, `"`) || !strings.HasSuffix(etag, `"`) {
			t.Fatalf("GET: %d, ETag %q", res.status, etag)
		}
		if again := do(t, e.h, "GET", "/tests/1", "").header.Get("ETag"); again != etag {
			t.Errorf("the same row has ETags %s and %s", etag, again)
		}
		if other := do(t, e.h, "GET", "/tests/2", "").header.Get("ETag"); other == etag {
			t.Errorf("two rows share the ETag %s", etag)
		}
		// RFC 9110 §5.6.1.2: a recipient must ignore empty list elements
		// (a sender that merged two fields leaves them).
		for _, inm := range []string{etag, "W/" + etag, `"x", ` + etag, "*", `, ` + etag, `"x", ,` + etag + `,`} {
			res := do(t, e.h, "GET", "/tests/1", "", "If-None-Match", inm)
			if res.status != http.StatusNotModified || len(res.body) != 0 || res.header.Get("ETag") != etag {
				t.Errorf("If-None-Match %s: %d %q ETag %q, want 304 without a body", inm, res.status, res.body, res.header.Get("ETag"))
			}
		}
		if res := do(t, e.h, "GET", "/tests/1", "", "If-None-Match", `"other"`); res.status != http.StatusOK {
			t.Errorf("If-None-Match of another tag: %d, want 200", res.status)
		}
		// Renamed, the row has a new representation and a new ETag.
		renamed := rename(t, e.h, "/tests/1", `{"name": "Robert"}`)
		if renamed.status != http.StatusOK || renamed.header.Get("ETag") == etag {
			t.Fatalf("rename: %d, ETag %q (was %q)", renamed.status, renamed.header.Get("ETag"), etag)
		}
		if res := do(t, e.h, "GET", "/tests/1", "", "If-None-Match", etag); res.status != http.StatusOK {
			t.Errorf("If-None-Match of the old ETag after a rename: %d, want 200", res.status)
		}
		if got := do(t, e.h, "GET", "/tests/1", "").header.Get("ETag"); got != renamed.header.Get("ETag") {
			t.Errorf("GET after PATCH: ETag %s, PATCH answered %s", got, renamed.header.Get("ETag"))
		}
	})
	t.Run("Page", func(t *testing.T) {
		res := do(t, e.h, "GET", "/tests?limit=1", "")
		etag := res.header.Get("ETag")
		if etag == "" {
			t.Fatal("a JSON page without ETag")
		}
		nm := do(t, e.h, "GET", "/tests?limit=1", "", "If-None-Match", etag)
		if nm.status != http.StatusNotModified || len(nm.body) != 0 || nm.header.Get("Link") == "" || nm.header.Get("Vary") != "Accept" {
			t.Errorf("page revalidation: %d %q, Link %q, Vary %q", nm.status, nm.body, nm.header.Get("Link"), nm.header.Get("Vary"))
		}
		mustCreate(t, e.h, "Cy")
		if res := do(t, e.h, "GET", "/tests", "", "If-None-Match", do(t, e.h, "GET", "/tests?limit=2", "").header.Get("ETag")); res.status != http.StatusOK {
			t.Errorf("another page's ETag: %d, want 200", res.status)
		}
		if exp := do(t, e.h, "GET", "/tests", "", "Accept", "application/x-ndjson"); exp.header.Get("ETag") != "" {
			t.Errorf("an export has ETag %q", exp.header.Get("ETag"))
		}
	})
}

func TestRename(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	rows := mustCreate(t, e.h, "Bob", "Ann")

	t.Run("OK", func(t *testing.T) {
		res := rename(t, e.h, "/tests/1", `{"name": "Robert"}`)
		if res.status != http.StatusOK {
			t.Fatalf("status %d %s", res.status, res.body)
		}
		var got test
		res.json(t, &got)
		if want := (test{ID: rows[0].ID, Name: "Robert"}); got != want {
			t.Errorf("got %+v, want %+v", got, want)
		}
		if names := tableNames(t, e.pool); !slices.Equal(names, []string{"Robert", "Ann"}) {
			t.Errorf("table %q", names)
		}
	})
	t.Run("JSONContentType", func(t *testing.T) {
		if res := do(t, e.h, "PATCH", "/tests/1", `{"name": "Rob"}`); res.status != http.StatusOK {
			t.Fatalf("application/json: %d %s", res.status, res.body)
		}
	})
	t.Run("SameName", func(t *testing.T) {
		if res := rename(t, e.h, "/tests/1", `{"name": "Rob"}`); res.status != http.StatusOK {
			t.Fatalf("renaming to its own name: %d %s", res.status, res.body)
		}
	})
	t.Run("TakenName", func(t *testing.T) {
		p := problemOf(t, rename(t, e.h, "/tests/1", `{"name": "Ann"}`), http.StatusConflict)
		if p.Detail != "A name in the request is already taken; nothing was stored." {
			t.Errorf("detail %q", p.Detail)
		}
	})
	t.Run("NotFound", func(t *testing.T) {
		problemOf(t, rename(t, e.h, "/tests/999", `{"name": "X"}`), http.StatusNotFound)
		problemOf(t, rename(t, e.h, "/tests/99999999999", `{"name": "X"}`), http.StatusNotFound)
	})
	t.Run("Invalid", func(t *testing.T) {
		for body, pointer := range map[string]string{`{"name": ""}`: "#/name", `{}`: "#/name", `{"name": null}`: "#/name"} {
			p := problemOf(t, rename(t, e.h, "/tests/1", body), http.StatusUnprocessableEntity)
			if len(p.Errors) != 1 || p.Errors[0].Pointer != pointer {
				t.Errorf("%s: errors %+v", body, p.Errors)
			}
		}
	})
	t.Run("BadRequest", func(t *testing.T) {
		for _, body := range []string{`[{"name": "X"}]`, `{"name": "X", "age": 1}`, `{"name": 1}`, `{"name": "X"} x`, `nope`} {
			problemOf(t, rename(t, e.h, "/tests/1", body), http.StatusBadRequest)
		}
		problemOf(t, rename(t, e.h, "/tests/abc", `{"name": "X"}`), http.StatusBadRequest)
		problemOf(t, rename(t, e.h, "/tests/1", `{"name": "X"}`, "If-Match", `nope`), http.StatusBadRequest)
	})
	t.Run("MediaType", func(t *testing.T) {
		p := problemOf(t, do(t, e.h, "PATCH", "/tests/1", `{"name": "X"}`, "Content-Type", "text/plain"), http.StatusUnsupportedMediaType)
		if p.Detail != "Content-Type must be application/merge-patch+json or application/json." {
			t.Errorf("detail %q", p.Detail)
		}
	})
	if names := tableNames(t, e.pool); !slices.Equal(names, []string{"Rob", "Ann"}) {
		t.Errorf("after the failed renames the table is %q", names)
	}
}

func TestIfMatch(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	mustCreate(t, e.h, "Bob", "Ann")
	etag := do(t, e.h, "GET", "/tests/1", "").header.Get("ETag")

	t.Run("RenameStale", func(t *testing.T) {
		p := problemOf(t, rename(t, e.h, "/tests/1", `{"name": "X"}`, "If-Match", `"stale"`), http.StatusPreconditionFailed)
		if !strings.Contains(p.Detail, "If-Match") {
			t.Errorf("detail %q", p.Detail)
		}
		problemOf(t, rename(t, e.h, "/tests/1", `{"name": "X"}`, "If-Match", "W/"+etag), http.StatusPreconditionFailed)
	})
	t.Run("RenameCurrent", func(t *testing.T) {
		res := rename(t, e.h, "/tests/1", `{"name": "Robert"}`, "If-Match", `"x", `+etag)
		if res.status != http.StatusOK {
			t.Fatalf("%d %s", res.status, res.body)
		}
		problemOf(t, rename(t, e.h, "/tests/1", `{"name": "Bobby"}`, "If-Match", etag), http.StatusPreconditionFailed)
		etag = res.header.Get("ETag")
		// Empty list elements are ignored (RFC 9110 §5.6.1.2), not a 400.
		again := rename(t, e.h, "/tests/1", `{"name": "Robert"}`, "If-Match", `, "x", , `+etag)
		if again.status != http.StatusOK {
			t.Fatalf("If-Match with empty list elements: %d %s", again.status, again.body)
		}
	})
	t.Run("Star", func(t *testing.T) {
		problemOf(t, rename(t, e.h, "/tests/999", `{"name": "X"}`, "If-Match", "*"), http.StatusNotFound)
	})
	t.Run("DeleteStale", func(t *testing.T) {
		problemOf(t, do(t, e.h, "DELETE", "/tests/1", "", "If-Match", `"stale"`), http.StatusPreconditionFailed)
		res := do(t, e.h, "DELETE", "/tests/1", "", "If-Match", etag)
		if res.status != http.StatusNoContent {
			t.Fatalf("%d %s", res.status, res.body)
		}
	})
	if names := tableNames(t, e.pool); !slices.Equal(names, []string{"Ann"}) {
		t.Errorf("table %q", names)
	}
}

func TestDelete(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	rows := mustCreate(t, e.h, "Bob", "Ann")
	res := do(t, e.h, "DELETE", "/tests/1", "")
	if res.status != http.StatusNoContent || len(res.body) != 0 {
		t.Fatalf("DELETE: %d %q", res.status, res.body)
	}
	problemOf(t, do(t, e.h, "GET", "/tests/1", ""), http.StatusNotFound)
	problemOf(t, do(t, e.h, "DELETE", "/tests/1", ""), http.StatusNotFound)
	problemOf(t, do(t, e.h, "DELETE", "/tests/abc", ""), http.StatusBadRequest)
	// The deleted row's name is free again.
	again := mustCreate(t, e.h, "Bob")[0]
	if again.ID == rows[0].ID {
		t.Errorf("the new Bob got the deleted row's id %d", again.ID)
	}
	if names := tableNames(t, e.pool); !slices.Equal(names, []string{"Ann", "Bob"}) {
		t.Errorf("table %q", names)
	}
}

func TestModifyNeedsToken(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	mustCreate(t, e.h, "Bob")
	h := api.NewHandler(slog.New(slog.DiscardHandler), e.st, testLimits, api.RequireToken("s3cret"))
	problemOf(t, rename(t, h, "/tests/1", `{"name": "X"}`), http.StatusUnauthorized)
	problemOf(t, do(t, h, "DELETE", "/tests/1", ""), http.StatusUnauthorized)
	if res := rename(t, h, "/tests/1", `{"name": "X"}`, "Authorization", "Bearer s3cret"); res.status != http.StatusOK {
		t.Errorf("with the token: %d %s", res.status, res.body)
	}
	if res := do(t, h, "DELETE", "/tests/1", "", "Authorization", "Bearer s3cret"); res.status != http.StatusNoContent {
		t.Errorf("with the token: %d %s", res.status, res.body)
	}
}

func TestRenameIdempotencyKey(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	mustCreate(t, e.h, "Bob")
	etag := do(t, e.h, "GET", "/tests/1", "").header.Get("ETag")
	key := []string{"Idempotency-Key", "rename-1", "If-Match", etag}
	first := rename(t, e.h, "/tests/1", `{"name": "Robert"}`, key...)
	if first.status != http.StatusOK {
		t.Fatalf("first: %d %s", first.status, first.body)
	}
	// Without the key the retry would be a 412 (the ETag changed); with it
	// the retry gets the first answer, ETag included, and changes nothing.
	retry := rename(t, e.h, "/tests/1", `{"name":"Robert"}`, key...)
	if retry.status != http.StatusOK || string(retry.body) != string(first.body) || retry.header.Get("ETag") != first.header.Get("ETag") {
		t.Errorf("retry: %d %s ETag %q; first %s ETag %q", retry.status, retry.body, retry.header.Get("ETag"), first.body, first.header.Get("ETag"))
	}
	problemOf(t, rename(t, e.h, "/tests/1", `{"name": "Other"}`, key...), http.StatusUnprocessableEntity)
	// A kept failure is final too: 404 stays 404 for the key.
	missing := []string{"Idempotency-Key", "rename-2"}
	problemOf(t, rename(t, e.h, "/tests/9", `{"name": "X"}`, missing...), http.StatusNotFound)
	mustCreate(t, e.h, "a", "b", "c", "d", "e")
	mustCreate(t, e.h, "f", "g", "h") // ids up to 9 exist now
	problemOf(t, rename(t, e.h, "/tests/9", `{"name": "X"}`, missing...), http.StatusNotFound)
	if names := tableNames(t, e.pool); names[0] != "Robert" || slices.Contains(names, "X") {
		t.Errorf("table %q", names)
	}
}

// TestRenameConcurrent: the If-Match check and the rename are one
// transaction under a row lock, so of renames racing with the same If-Match
// exactly one wins; a rename racing a delete gets 200 (before it) or 404
// (after it), never a resurrected row; a rename to a name being created
// waits for that create and then is 409 (or 200 if the create fails).
func TestRenameConcurrent(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	// Every update and delete takes 100 ms on the server, so racing
	// requests all read the row before the first change commits: without
	// the lock between check and change, they would all pass the check.
	for _, q := range []string{
		`CREATE FUNCTION slow_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(0.1);
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
END $$`,
		`CREATE TRIGGER slow_change BEFORE UPDATE OR DELETE ON test FOR EACH ROW EXECUTE FUNCTION slow_change()`,
	} {
		if _, err := e.pool.Exec(context.Background(), q); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("SameIfMatch", func(t *testing.T) {
		row := mustCreate(t, e.h, "race")[0]
		path := "/tests/" + strconv.Itoa(int(row.ID))
		etag := do(t, e.h, "GET", path, "").header.Get("ETag")
		const n = 8
		statuses := make([]int, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				statuses[i] = rename(t, e.h, path, `{"name": "race-`+strconv.Itoa(i)+`"}`, "If-Match", etag).status
			})
		}
		wg.Wait()
		slices.Sort(statuses)
		want := append([]int{http.StatusOK}, slices.Repeat([]int{http.StatusPreconditionFailed}, n-1)...)
		if diff := cmp.Diff(want, statuses); diff != "" {
			t.Errorf("statuses (-want +got):\n%s", diff)
		}
	})
	t.Run("RenameRacingDelete", func(t *testing.T) {
		for range 5 {
			row := mustCreate(t, e.h, "doomed-"+time.Now().Format("150405.000000000"))[0]
			path := "/tests/" + strconv.Itoa(int(row.ID))
			etag := do(t, e.h, "GET", path, "").header.Get("ETag")
			var renamed, deleted int
			var wg sync.WaitGroup
			wg.Go(func() {
				renamed = rename(t, e.h, path, `{"name": "`+"renamed-"+strconv.Itoa(int(row.ID))+`"}`, "If-Match", etag).status
			})
			wg.Go(func() { deleted = do(t, e.h, "DELETE", path, "", "If-Match", etag).status })
			wg.Wait()
			// Whichever locked the row first wins; the other sees it gone
			// (404) or changed (412).
			ok := (renamed == http.StatusOK && deleted == http.StatusPreconditionFailed) ||
				(deleted == http.StatusNoContent && renamed == http.StatusNotFound)
			if !ok {
				t.Fatalf("rename %d, delete %d", renamed, deleted)
			}
			exists := do(t, e.h, "GET", path, "").status == http.StatusOK
			if exists != (renamed == http.StatusOK) {
				t.Fatalf("rename %d, delete %d, row exists: %v", renamed, deleted, exists)
			}
		}
	})
	t.Run("RenameToNameBeingCreated", func(t *testing.T) {
		row := mustCreate(t, e.h, "waiting")[0]
		// A transaction holds the name "pending" uncommitted.
		tx, err := e.pool.Begin(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(context.Background(), `INSERT INTO test (name) VALUES ('pending')`); err != nil {
			t.Fatal(err)
		}
		done := make(chan int, 1)
		go func() { done <- rename(t, e.h, "/tests/"+strconv.Itoa(int(row.ID)), `{"name": "pending"}`).status }()
		select {
		case s := <-done:
			t.Fatalf("the rename answered %d while the create of its name was uncommitted", s)
		case <-time.After(300 * time.Millisecond):
		}
		if err := tx.Commit(context.Background()); err != nil {
			t.Fatal(err)
		}
		if s := <-done; s != http.StatusConflict {
			t.Errorf("rename to a name committed meanwhile: %d, want 409", s)
		}
	})
}

func TestListByName(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	mustCreate(t, e.h, "Bob", "Ann", "bob")
	for _, tc := range []struct {
		query string
		want  []test
	}{
		{"name=Bob", []test{{1, "Bob"}}},
		{"name=bob", []test{{3, "bob"}}},
		{"name=Nobody", []test{}},
		{"name=Bob&after=1", []test{}},
		{"name=Ann&after=1&limit=1", []test{{2, "Ann"}}},
		{"name=", []test{}},
		// after beyond any integer id: no row, not a database error.
		{"name=Bob&after=2147483647", []test{}},
		{"name=Bob&after=9223372036854775807", []test{}},
	} {
		t.Run(tc.query, func(t *testing.T) {
			res := do(t, e.h, "GET", "/tests?"+tc.query, "")
			if res.status != http.StatusOK || res.header.Get("Link") != "" {
				t.Fatalf("%d %s, Link %q", res.status, res.body, res.header.Get("Link"))
			}
			var got []test
			res.json(t, &got)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	if res := do(t, e.h, "GET", "/tests?name=Ann", "", "Accept", "text/csv"); string(res.body) != "id,name\r\n2,Ann\r\n" {
		t.Errorf("CSV by name: %q", res.body)
	}
	if res := do(t, e.h, "GET", "/tests?name=Bob&after=9223372036854775807", "", "Accept", "application/x-ndjson"); res.status != http.StatusOK || len(res.body) != 0 {
		t.Errorf("NDJSON by name after the largest id: %d %q", res.status, res.body)
	}
	if res := do(t, e.h, "GET", "/tests?name=Nobody", "", "Accept", "application/x-ndjson"); res.status != http.StatusOK || len(res.body) != 0 {
		t.Errorf("NDJSON by a name nobody has: %d %q", res.status, res.body)
	}
	problemOf(t, do(t, e.h, "GET", "/tests?name=a&name=b", ""), http.StatusBadRequest)
	problemOf(t, do(t, e.h, "GET", "/tests?name=a%00b", ""), http.StatusBadRequest)
	problemOf(t, do(t, e.h, "GET", "/tests?name=%ff", ""), http.StatusBadRequest)
}
