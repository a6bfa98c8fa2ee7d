package api_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ybrest/testsapi/internal/api"
	"github.com/ybrest/testsapi/internal/dbtest"
	"github.com/ybrest/testsapi/internal/store"
)

// compressMin is the smallest answer the compressed tests' service
// compresses: the default of COMPRESS_MIN_BYTES.
const compressMin = 1024

// mustCompressedEnv is mustEnv's service with compressed answers (gzip and
// zstd) on.
func mustCompressedEnv(t *testing.T, url string, lim api.Limits) *env {
	t.Helper()
	e := mustEnvURL(t, url, lim)
	e.h = api.NewHandler(slog.New(slog.DiscardHandler), e.st, lim, api.Compress(compressMin, true, true))
	return e
}

// decoded is b decompressed from coding (gzip or zstd); a stream that does
// not end cleanly fails the test.
func decoded(t testing.TB, coding string, b []byte) []byte {
	t.Helper()
	var out []byte
	var err error
	switch coding {
	case "gzip":
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(bytes.NewReader(b)); err == nil {
			out, err = io.ReadAll(zr)
		}
	case "zstd":
		var zr *zstd.Decoder
		if zr, err = zstd.NewReader(bytes.NewReader(b)); err == nil {
			out, err = io.ReadAll(zr)
			zr.Close()
		}
	default:
		t.Fatalf("Content-Encoding %q", coding)
	}
	if err != nil {
		t.Fatalf("decode %s body of %d bytes: %v", coding, len(b), err)
	}
	return out
}

func gzipped(t testing.TB, s string) string {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := io.WriteString(zw, s); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// getRaw sends GET url with accept and Accept-Encoding: gzip, and returns
// the answer with its body as sent (the Go client's own decompression is
// off); the body is closed when the test ends.
func getRaw(t *testing.T, ctx context.Context, url, accept string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", accept)
	req.Header.Set("Accept-Encoding", "gzip")
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	t.Cleanup(client.CloseIdleConnections)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Body.Close() })
	if res.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("GET %s as %s: %d, Content-Encoding %q, want gzip", url, accept, res.StatusCode, res.Header.Get("Content-Encoding"))
	}
	return res
}

// mustRows inserts n rows named "row-<i>" padded to 40 bytes.
func mustRows(t *testing.T, e *env, n int) {
	t.Helper()
	if _, err := e.pool.Exec(t.Context(), `INSERT INTO test (name) SELECT rpad('row-' || i, 40, '.') FROM generate_series(1, $1) AS i`, n); err != nil {
		t.Fatal(err)
	}
}

func hasVary(h http.Header, v string) bool {
	for _, line := range h.Values("Vary") {
		for _, f := range strings.Split(line, ",") {
			if strings.EqualFold(strings.TrimSpace(f), v) {
				return true
			}
		}
	}
	return false
}

// TestCompressedPage: a JSON page is answered in the coding the client
// asks for, with its own strong ETag, and Vary: Accept-Encoding; the
// conditional GET works with either representation's ETag; small answers
// and HEAD go as they are.
func TestCompressedPage(t *testing.T) {
	t.Parallel()
	e := mustCompressedEnv(t, dbtest.NewSchema(t), testLimits)
	mustRows(t, e, 100)

	plain := do(t, e.h, "GET", "/tests?limit=100", "")
	if plain.status != http.StatusOK || plain.header.Get("Content-Encoding") != "" || !hasVary(plain.header, "Accept-Encoding") {
		t.Fatalf("identity page: %d, Content-Encoding %q, Vary %q", plain.status, plain.header.Get("Content-Encoding"), plain.header.Values("Vary"))
	}
	plainTag := plain.header.Get("ETag")
	for _, coding := range []string{"gzip", "zstd"} {
		t.Run(coding, func(t *testing.T) {
			// Accept: */* (curl's) is JSON, not an event stream.
			res := do(t, e.h, "GET", "/tests?limit=100", "", "Accept-Encoding", coding, "Accept", "*/*")
			if res.status != http.StatusOK || res.header.Get("Content-Encoding") != coding {
				t.Fatalf("status %d, Content-Encoding %q; want 200 %s", res.status, res.header.Get("Content-Encoding"), coding)
			}
			if !bytes.Equal(res.body, plain.body) {
				t.Fatalf("decoded page differs from the identity one:\n%s\n%s", res.body, plain.body)
			}
			if len(res.wire) >= len(plain.body)/2 {
				t.Errorf("%d bytes compressed, %d identity: want less than half", len(res.wire), len(plain.body))
			}
			tag := res.header.Get("ETag")
			if want := strings.TrimSuffix(plainTag, `"`) + "-" + coding + `"`; tag != want {
				t.Fatalf("ETag %s, want %s (the identity one is %s)", tag, want, plainTag)
			}
			if !hasVary(res.header, "Accept-Encoding") || !hasVary(res.header, "Accept") {
				t.Fatalf("Vary %q", res.header.Values("Vary"))
			}
			// Either representation's tag validates the page; the 304
			// names the one the client has.
			for _, have := range []string{tag, plainTag, "W/" + tag} {
				nm := do(t, e.h, "GET", "/tests?limit=100", "", "Accept-Encoding", coding, "If-None-Match", have)
				if nm.status != http.StatusNotModified || nm.header.Get("ETag") != strings.TrimPrefix(have, "W/") || len(nm.wire) != 0 {
					t.Fatalf("If-None-Match %s: %d, ETag %s, %d bytes; want 304 with that tag and no body", have, nm.status, nm.header.Get("ETag"), len(nm.wire))
				}
			}
		})
	}
	t.Run("Small", func(t *testing.T) {
		res := do(t, e.h, "GET", "/tests?limit=2", "", "Accept-Encoding", "gzip")
		if res.status != http.StatusOK || res.header.Get("Content-Encoding") != "" || len(res.body) >= compressMin {
			t.Fatalf("%d bytes answered with Content-Encoding %q; want under %d, identity", len(res.body), res.header.Get("Content-Encoding"), compressMin)
		}
		if !hasVary(res.header, "Accept-Encoding") || res.header.Get("Content-Length") != strconv.Itoa(len(res.body)) {
			t.Fatalf("Vary %q, Content-Length %q", res.header.Values("Vary"), res.header.Get("Content-Length"))
		}
	})
	t.Run("Head", func(t *testing.T) {
		// gzhttp never compresses HEAD (nginx once cached such answers
		// wrongly): it describes the identity representation.
		srv := httptest.NewServer(e.h)
		defer srv.Close()
		req, _ := http.NewRequestWithContext(t.Context(), "HEAD", srv.URL+"/tests?limit=100", nil)
		req.Header.Set("Accept-Encoding", "gzip")
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK || res.Header.Get("Content-Encoding") != "" || !hasVary(res.Header, "Accept-Encoding") ||
			res.Header.Get("ETag") != plainTag || res.Header.Get("Content-Length") != strconv.Itoa(len(plain.body)) {
			t.Fatalf("HEAD: %d, Content-Encoding %q, ETag %s, Content-Length %s, Vary %q; want the identity page's headers",
				res.StatusCode, res.Header.Get("Content-Encoding"), res.Header.Get("ETag"), res.Header.Get("Content-Length"), res.Header.Values("Vary"))
		}
	})
	t.Run("NotAccepted", func(t *testing.T) {
		res := do(t, e.h, "GET", "/tests?limit=100", "", "Accept-Encoding", "gzip;q=0, br")
		if res.header.Get("Content-Encoding") != "" || !bytes.Equal(res.body, plain.body) {
			t.Fatalf("Content-Encoding %q for a client that refuses gzip", res.header.Get("Content-Encoding"))
		}
	})
}

// TestCompressedIfMatch: a row long enough to be compressed has a
// compressed ETag too, and If-Match takes it for the row's state.
func TestCompressedIfMatch(t *testing.T) {
	t.Parallel()
	e := mustCompressedEnv(t, dbtest.NewSchema(t), testLimits)
	// 255 characters of 4 bytes each: over 1 KB as JSON.
	created := mustCreate(t, e.h, strings.Repeat("😀", 255))
	path := "/tests/" + strconv.Itoa(int(created[0].ID))
	res := do(t, e.h, "GET", path, "", "Accept-Encoding", "gzip")
	tag := res.header.Get("ETag")
	if res.status != http.StatusOK || res.header.Get("Content-Encoding") != "gzip" || !strings.HasSuffix(tag, `-gzip"`) {
		t.Fatalf("GET: %d, Content-Encoding %q, ETag %s", res.status, res.header.Get("Content-Encoding"), tag)
	}
	stale := do(t, e.h, "PATCH", path, `{"name":"renamed"}`, "If-Match", `"0-gzip"`)
	problemOf(t, stale, http.StatusPreconditionFailed)
	ok := do(t, e.h, "PATCH", path, `{"name":"renamed"}`, "If-Match", tag)
	if ok.status != http.StatusOK {
		t.Fatalf("PATCH with If-Match %s: %d %s", tag, ok.status, ok.body)
	}
}

// TestCompressedExport: NDJSON and CSV exports decode to what the identity
// export is, the compressed stream ending cleanly.
func TestCompressedExport(t *testing.T) {
	t.Parallel()
	e := mustCompressedEnv(t, dbtest.NewSchema(t), testLimits)
	mustRows(t, e, 5000)
	for _, accept := range []string{"application/x-ndjson", "text/csv"} {
		plain := do(t, e.h, "GET", "/tests", "", "Accept", accept)
		for _, coding := range []string{"gzip", "zstd"} {
			res := do(t, e.h, "GET", "/tests", "", "Accept", accept, "Accept-Encoding", coding)
			if res.status != http.StatusOK || res.header.Get("Content-Encoding") != coding {
				t.Fatalf("%s %s: %d, Content-Encoding %q", accept, coding, res.status, res.header.Get("Content-Encoding"))
			}
			if !bytes.Equal(res.body, plain.body) {
				t.Fatalf("%s %s: decoded export of %d bytes differs from the identity one of %d", accept, coding, len(res.body), len(plain.body))
			}
			t.Logf("%s, %d rows: %d bytes identity, %d %s", accept, 5000, len(plain.body), len(res.wire), coding)
		}
	}
}

// TestCompressedExportCut: an export that fails after its status is cut in
// the compressed stream too: the gzip stream has no end (its trailer is
// never sent), so even a client that ignored the HTTP framing would fail
// to decompress it rather than read a shorter body as whole.
func TestCompressedExportCut(t *testing.T) {
	t.Parallel()
	h := api.NewHandler(slog.New(slog.DiscardHandler), midStreamStore{}, testLimits, api.Compress(compressMin, true, true))
	srv := httptest.NewServer(h)
	defer srv.Close()
	for _, accept := range []string{"application/x-ndjson", "text/csv"} {
		res := getRaw(t, t.Context(), srv.URL+"/tests", accept)
		raw, err := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusOK || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("%s: %d, read error %v after %d bytes; want 200 and a cut body", accept, res.StatusCode, err, len(raw))
		}
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("%s: the %d bytes received are not gzip: %v", accept, len(raw), err)
		}
		rows, err := io.ReadAll(zr)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("%s: the cut gzip stream decompressed to %d bytes with error %v; want io.ErrUnexpectedEOF", accept, len(rows), err)
		}
		if len(rows) == 0 {
			t.Fatalf("%s: no rows came before the cut", accept)
		}
	}

	// net/http drops what it had buffered when a handler aborts, the end
	// of a gzip stream included; a response that passes every write on (a
	// recorder here, a proxy's or HTTP/2's buffers elsewhere) must not
	// get the end either.
	rec := httptest.NewRecorder()
	func() {
		defer func() {
			if r := recover(); r != http.ErrAbortHandler {
				t.Fatalf("panic %v, want http.ErrAbortHandler", r)
			}
		}()
		h.ServeHTTP(rec, newRequest("GET", "/tests", "", "Accept", "application/x-ndjson", "Accept-Encoding", "gzip"))
	}()
	zr, err := gzip.NewReader(bytes.NewReader(rec.Body.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if rows, err := io.ReadAll(zr); !errors.Is(err, io.ErrUnexpectedEOF) || len(rows) == 0 {
		t.Fatalf("every byte the cut export wrote decompressed to %d bytes with error %v; want rows, then io.ErrUnexpectedEOF", len(rows), err)
	}
}

// pausingStore's export sends rows, then waits until the client has
// decompressed the first of them before it sends the rest: a database
// that pauses mid-export, at a point the test chooses.
type pausingStore struct {
	failingStore
	first int           // rows before the pause
	read  chan struct{} // closed once the client has read them
}

func (p pausingStore) Stream(ctx context.Context, _ int64, _ int, fn func(store.Test) error) error {
	name := strings.Repeat("n", 100)
	for i := range 2 * p.first {
		if i == p.first {
			select {
			case <-p.read:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err := fn(store.Test{ID: int32(i + 1), Name: name}); err != nil {
			return err
		}
	}
	return nil
}

// TestCompressedExportFlushes: what an export has flushed reaches the
// client as a gzip chunk it can decompress at once, while the export goes
// on: the client reads rows that came before a pause of the source, which
// waits for the client to have read them.
func TestCompressedExportFlushes(t *testing.T) {
	t.Parallel()
	// 400 rows of about 120 bytes: past the 16 KB after which an export
	// flushes.
	ps := pausingStore{first: 400, read: make(chan struct{})}
	srv := httptest.NewServer(api.NewHandler(slog.New(slog.DiscardHandler), ps, testLimits, api.Compress(compressMin, true, true)))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	res := getRaw(t, ctx, srv.URL+"/tests", "application/x-ndjson")
	zr, err := gzip.NewReader(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(zr)
	for i := range 100 {
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatalf("row %d, before the pause: %v (the flushed rows did not reach the client)", i+1, err)
		}
	}
	close(ps.read)
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	if n := 100 + bytes.Count(rest, []byte("\n")); n != 2*ps.first {
		t.Fatalf("%d rows, want %d", n, 2*ps.first)
	}
}

// TestCompressedExportStreams: a gzip export streams: its rows reach the
// client, decompressed, while the database is still sending them, as
// chunks flushed whole (ending at a line's end). Then the database goes
// silent (a blackhole in the proxy between the service and PostgreSQL),
// and the export is cut at ExportStallTimeout in a way the client sees: a
// failed read, not a shorter export.
func TestCompressedExportStreams(t *testing.T) {
	t.Parallel()
	const rows = 200_000
	url := dbtest.NewSchema(t)
	px := dbtest.NewProxy(t, url)
	lim := testLimits
	lim.ExportStallTimeout = 2 * time.Second
	e := mustCompressedEnv(t, px.URL(url), lim)
	// About 24 MB as NDJSON: far more than socket buffers hold.
	if _, err := e.pool.Exec(t.Context(), `INSERT INTO test (name) SELECT repeat('x', 100) || i FROM generate_series(1, $1) AS i`, rows); err != nil {
		t.Fatal(err)
	}
	// 512 KB/s from the database: the whole export would take a minute.
	if err := px.Bandwidth(512); err != nil {
		t.Fatal(err)
	}
	defer px.Clear() // before the pool closes: pgx drains a cut connection
	srv := httptest.NewServer(e.h)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	start := time.Now()
	res := getRaw(t, ctx, srv.URL+"/tests", "application/x-ndjson")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("export: %d", res.StatusCode)
	}
	zr, err := gzip.NewReader(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(zr)
	for i := range 1000 {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("row %d of the export: %v", i+1, err)
		}
		if want := `{"id":` + strconv.Itoa(i+1) + `,`; !strings.HasPrefix(line, want) {
			t.Fatalf("row %d: %q", i+1, line)
		}
	}
	first := time.Since(start)
	t.Logf("the first 1000 rows, decompressed, after %s", first.Round(time.Millisecond))
	if first > 10*time.Second {
		t.Fatalf("the first 1000 rows took %s: the export did not stream", first)
	}

	if err := px.Blackhole(); err != nil {
		t.Fatal(err)
	}
	// Every row the service had when the database went silent reaches
	// the client (it flushes as it goes); then the read fails.
	got := 1000
	for {
		line, err := br.ReadString('\n')
		if err == nil {
			got++
			continue
		}
		if err == io.EOF {
			t.Fatalf("the export read as complete (%d rows of %d) although the database went silent", got, rows)
		}
		if line != "" {
			t.Logf("a partial row before the cut: %q", line)
		}
		t.Logf("cut after %d rows: %v", got, err)
		break
	}
	if got <= 1000 || got >= rows {
		t.Fatalf("%d rows before the cut", got)
	}
}

// TestGzipRequestBodies: POST /tests takes gzip bodies, JSON and imports,
// with the size limits on what they inflate to; other codings are 415 and
// broken gzip is 400, and nothing is stored by either.
func TestGzipRequestBodies(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	post := func(t *testing.T, body, contentType string, header ...string) response {
		t.Helper()
		req := newRequest("POST", "/tests", body, append([]string{"Content-Type", contentType}, header...)...)
		return serve(t, e.h, req)
	}
	count := func(t *testing.T) int {
		t.Helper()
		var n int
		if err := e.pool.QueryRow(t.Context(), "SELECT count(*) FROM test").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	t.Run("JSONArray", func(t *testing.T) {
		res := post(t, gzipped(t, `[{"name":"gz-a"},{"name":"gz-b"}]`), "application/json", "Content-Encoding", "gzip")
		if res.status != http.StatusCreated || !bytes.Contains(res.body, []byte(`"gz-b"`)) {
			t.Fatalf("%d %s", res.status, res.body)
		}
	})
	t.Run("NDJSONImport", func(t *testing.T) {
		res := post(t, gzipped(t, "{\"name\":\"gz-c\"}\n{\"name\":\"gz-d\"}\n"), "application/x-ndjson", "Content-Encoding", "gzip")
		if res.status != http.StatusCreated || string(res.body) != "{\"created\":2}\n" {
			t.Fatalf("%d %s", res.status, res.body)
		}
	})
	t.Run("CSVImport", func(t *testing.T) {
		res := post(t, gzipped(t, "name\r\ngz-e\r\n"), "text/csv", "Content-Encoding", "x-gzip")
		if res.status != http.StatusCreated {
			t.Fatalf("%d %s", res.status, res.body)
		}
	})
	t.Run("Identity", func(t *testing.T) {
		res := post(t, `{"name":"gz-f"}`, "application/json", "Content-Encoding", "identity")
		if res.status != http.StatusCreated {
			t.Fatalf("%d %s", res.status, res.body)
		}
	})
	before := count(t)
	// A bomb: a few KB that inflate to far more than the limit
	// (testLimits: 64 KiB for JSON, 1 MiB for imports).
	bomb := gzipped(t, "[{\"name\":\"x\"}"+strings.Repeat(", {\"name\":\"x\"}", 1<<20)+"]")
	importBomb := gzipped(t, strings.Repeat("\n", 32<<20))
	for _, c := range []struct {
		name, body, contentType, coding string
		status                          int
		detail                          string
	}{
		{"JSONBomb", bomb, "application/json", "gzip", http.StatusRequestEntityTooLarge, "65536 bytes"},
		{"ImportBomb", importBomb, "application/x-ndjson", "gzip", http.StatusRequestEntityTooLarge, "1048576 bytes"},
		{"CSVBomb", gzipped(t, "name\n"+strings.Repeat("\n", 32<<20)), "text/csv", "gzip", http.StatusRequestEntityTooLarge, "1048576 bytes"},
		{"Corrupt", "\x1f\x8b\x08\x00garbage", "application/json", "gzip", http.StatusBadRequest, "not valid gzip"},
		{"NotGzip", `{"name":"plain"}`, "application/json", "gzip", http.StatusBadRequest, "not valid gzip"},
		{"Truncated", gzipped(t, `[{"name":"cut-1"},{"name":"cut-2"}]`)[:20], "application/json", "gzip", http.StatusBadRequest, "not valid gzip"},
		{"TruncatedImport", gzipped(t, "{\"name\":\"cut-3\"}\n{\"name\":\"cut-4\"}\n")[:25], "application/x-ndjson", "gzip", http.StatusBadRequest, "not valid gzip"},
		{"Brotli", `{"name":"br"}`, "application/json", "br", http.StatusUnsupportedMediaType, "Content-Encoding must be gzip"},
		{"TwoCodings", gzipped(t, gzipped(t, `{"name":"twice"}`)), "application/json", "gzip, gzip", http.StatusUnsupportedMediaType, "Content-Encoding must be gzip"},
		{"ImportBrotli", "{\"name\":\"br\"}\n", "application/x-ndjson", "br", http.StatusUnsupportedMediaType, "Content-Encoding must be gzip"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := problemOf(t, post(t, c.body, c.contentType, "Content-Encoding", c.coding), c.status)
			if !strings.Contains(p.Detail, c.detail) {
				t.Fatalf("detail %q, want it to say %q", p.Detail, c.detail)
			}
		})
	}
	t.Run("UnsupportedSaysWhich", func(t *testing.T) {
		res := post(t, `{"name":"br"}`, "application/json", "Content-Encoding", "br")
		if got := res.header.Get("Accept-Encoding"); got != "gzip" {
			t.Fatalf("415 with Accept-Encoding %q, want gzip (RFC 9110 15.5.16)", got)
		}
	})
	if n := count(t); n != before {
		t.Fatalf("%d rows after the refused bodies, %d before", n, before)
	}
}

// TestGzipBombMemory: a gzip body that inflates to 1 GiB of blank lines
// (about 1 MB sent) against an import limit of 4 MiB is read as a stream
// up to the limit and refused: what the service allocates meanwhile is a
// few buffers, not the body. Not parallel, so that the process's
// allocation count is this test's.
func TestGzipBombMemory(t *testing.T) {
	lim := testLimits
	lim.ImportMaxBytes = 4 << 20
	e := mustEnvURL(t, dbtest.NewSchema(t), lim)
	// 1024 gzip members of 1 MiB of newlines each: gzip readers take
	// concatenated members as one stream (RFC 1952 §2.2), as this one does.
	bomb := bytes.Repeat([]byte(gzipped(t, strings.Repeat("\n", 1<<20))), 1024)

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	req := httptest.NewRequest("POST", "/tests", bytes.NewReader(bomb))
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set("Content-Encoding", "gzip")
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req) // not serve: its check of the answer would count
	runtime.ReadMemStats(&after)
	p := problemOf(t, response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}, http.StatusRequestEntityTooLarge)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d bytes of gzip (1 GiB inflated): %s; %.1f MiB allocated meanwhile, heap in use %.1f MiB after",
		len(bomb), p.Detail, float64(alloc)/(1<<20), float64(after.HeapInuse)/(1<<20))
	if alloc > 8<<20 {
		t.Fatalf("%.1f MiB allocated refusing the bomb; want a few buffers (under 8 MiB)", float64(alloc)/(1<<20))
	}
}
