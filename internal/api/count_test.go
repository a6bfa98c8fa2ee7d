package api_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/ybrest/testsapi/internal/api"
	"github.com/ybrest/testsapi/internal/store"
)

// TestCount checks Prefer: count=exact and count=estimated on JSON pages:
// the count in X-Total-Count, the kind in Preference-Applied, an estimate
// that is the database's statistics (stale until ANALYZE), and the exact
// count where there are no statistics yet.
func TestCount(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	mustCreate(t, e.h, "a", "b", "c", "d", "e", "f", "g")
	count := func(t *testing.T, target, prefer string) (applied, total string) {
		t.Helper()
		res := do(t, e.h, "GET", target, "", "Prefer", prefer)
		if res.status != http.StatusOK {
			t.Fatalf("%s: %d %s", target, res.status, res.body)
		}
		if !slices.Contains(res.header.Values("Vary"), "Prefer") {
			t.Errorf("Vary %q lacks Prefer", res.header.Values("Vary"))
		}
		return res.header.Get("Preference-Applied"), res.header.Get("X-Total-Count")
	}
	check := func(t *testing.T, target, prefer, wantApplied, wantTotal string) {
		t.Helper()
		if applied, total := count(t, target, prefer); applied != wantApplied || total != wantTotal {
			t.Errorf("%s with Prefer %q: Preference-Applied %q, X-Total-Count %q; want %q, %q",
				target, prefer, applied, total, wantApplied, wantTotal)
		}
	}
	t.Run("Exact", func(t *testing.T) {
		check(t, "/tests?limit=2", "count=exact", "count=exact", "7")
		check(t, "/tests?after=3&limit=2", `return=minimal, Count="Exact"; x=1`, "count=exact", "7")
	})
	t.Run("EstimatedWithoutStatistics", func(t *testing.T) {
		// A table never analyzed: reltuples is -1, so the count is exact.
		check(t, "/tests?limit=2", "count=estimated", "count=exact", "7")
	})
	t.Run("Estimated", func(t *testing.T) {
		if _, err := e.pool.Exec(context.Background(), "ANALYZE test"); err != nil {
			t.Fatal(err)
		}
		mustCreate(t, e.h, "h", "i", "j")
		// The statistics are of the table as ANALYZE saw it.
		check(t, "/tests?limit=2", "count=estimated", "count=estimated", "7")
		check(t, "/tests?limit=2", "count=exact", "count=exact", "10")
	})
	t.Run("ByName", func(t *testing.T) {
		check(t, "/tests?name=b", "count=exact", "count=exact", "1")
		check(t, "/tests?name=nobody", "count=estimated", "count=estimated", "0")
	})
	t.Run("NotAsked", func(t *testing.T) {
		check(t, "/tests", "", "", "")
		check(t, "/tests", "count=planned", "", "") // not a kind this service has
		check(t, "/tests", "respond-async", "", "")
	})
	t.Run("Export", func(t *testing.T) {
		res := do(t, e.h, "GET", "/tests", "", "Prefer", "count=exact", "Accept", "application/x-ndjson")
		if res.status != http.StatusOK || res.header.Get("Preference-Applied") != "" || res.header.Get("X-Total-Count") != "" {
			t.Errorf("export with Prefer count: %d %v", res.status, res.header)
		}
	})
	t.Run("NotModified", func(t *testing.T) {
		// A 304 carries the count too, so that a cache refreshing its
		// copy gets the current one.
		res := do(t, e.h, "GET", "/tests?limit=2", "")
		res = do(t, e.h, "GET", "/tests?limit=2", "", "If-None-Match", res.header.Get("ETag"), "Prefer", "count=exact")
		if res.status != http.StatusNotModified || res.header.Get("X-Total-Count") != "10" {
			t.Errorf("304: %d %v", res.status, res.header)
		}
	})
}

// slowCount is the real store but for a count that takes as long as its
// context lets it, as an exact count of a huge table would.
type slowCount struct{ *store.Store }

func (s slowCount) Count(ctx context.Context) (int64, error) {
	<-ctx.Done()
	return 0, fmt.Errorf("count: %w", ctx.Err())
}

// TestCountTimeout checks that an exact count is bounded by the request
// timeout: a 503 with Retry-After, not a request that hangs.
func TestCountTimeout(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	lim := testLimits
	lim.RequestTimeout = 300 * time.Millisecond
	h := api.NewHandler(slog.New(slog.DiscardHandler), slowCount{e.st}, lim)
	start := time.Now()
	res := do(t, h, "GET", "/tests", "", "Prefer", "count=exact")
	problemOf(t, res, http.StatusServiceUnavailable)
	if took := time.Since(start); took > 3*time.Second || res.header.Get("Retry-After") == "" {
		t.Fatalf("took %s; Retry-After %q", took, res.header.Get("Retry-After"))
	}
}
