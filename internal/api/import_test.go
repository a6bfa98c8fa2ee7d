package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/ybrest/testsapi/internal/dbtest"
)

const (
	ndjson   = "application/x-ndjson"
	mediaCSV = "text/csv"
)

// doImport posts body as an import of media type media.
func doImport(t *testing.T, h http.Handler, media, body string, header ...string) response {
	t.Helper()
	return do(t, h, "POST", "/tests", body, append([]string{"Content-Type", media}, header...)...)
}

func TestImportNDJSON(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	body := "{\"name\": \"Bob\"}\n\n{\"name\":\"Al\\u00efce\"}\r\n  {\"name\": \"<x>\"}  " // blank line, CRLF, no final newline
	res := doImport(t, e.h, ndjson, body)
	if res.status != http.StatusCreated || string(res.body) != "{\"created\":3}\n" {
		t.Fatalf("got %d %s", res.status, res.body)
	}
	if diff := cmp.Diff([]string{"Bob", "Alïce", "<x>"}, tableNames(t, e.pool)); diff != "" {
		t.Fatalf("table (-want +got):\n%s", diff)
	}
}

// TestImportAnswersRows checks the NDJSON answer: every created row, in the
// order of the file, as the table has them.
func TestImportAnswersRows(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	mustCreate(t, e.h, "before")
	var body strings.Builder
	var want []string
	for i := range 3000 { // more than one flush of the answer
		n := "n" + strconv.Itoa(i)
		want = append(want, n)
		body.WriteString(`{"name":"` + n + "\"}\n")
	}
	res := doImport(t, e.h, ndjson, body.String(), "Accept", ndjson)
	if res.status != http.StatusCreated || res.header.Get("Content-Type") != ndjson+"; charset=utf-8" {
		t.Fatalf("got %d %q %.200s", res.status, res.header.Get("Content-Type"), res.body)
	}
	var got []test
	sc := bufio.NewScanner(bytes.NewReader(res.body))
	for sc.Scan() {
		var row test
		if err := json.Unmarshal(sc.Bytes(), &row); err != nil {
			t.Fatal(err)
		}
		got = append(got, row)
	}
	if len(got) != len(want) {
		t.Fatalf("%d rows answered, want %d", len(got), len(want))
	}
	for i, row := range got {
		if row.Name != want[i] || i > 0 && row.ID <= got[i-1].ID {
			t.Fatalf("row %d: %+v after %+v", i, row, got[max(i-1, 0)])
		}
	}
	var stored []test
	for _, row := range got {
		r := do(t, e.h, "GET", "/tests/"+strconv.Itoa(int(row.ID)), "")
		var s test
		r.json(t, &s)
		stored = append(stored, s)
		if len(stored) == 5 {
			break
		}
	}
	if diff := cmp.Diff(got[:5], stored); diff != "" {
		t.Fatalf("answered rows are not the stored ones (-answered +stored):\n%s", diff)
	}
	// The temporary table of the answer is gone: a second import on the
	// pool's connections works.
	if res := doImport(t, e.h, ndjson, `{"name":"again"}`, "Accept", ndjson); res.status != http.StatusCreated {
		t.Fatalf("second import: %d %s", res.status, res.body)
	}
}

// exportCSV is GET /tests as CSV, less its id column.
func exportCSV(t *testing.T, h http.Handler) string {
	t.Helper()
	res := do(t, h, "GET", "/tests", "", "Accept", mediaCSV)
	if res.status != http.StatusOK {
		t.Fatalf("export: %d %s", res.status, res.body)
	}
	// Each record starts with "id," at the start of the body or after a
	// CRLF outside quotes.
	var out []byte
	quoted, recordStart := false, true
	for i := 0; i < len(res.body); i++ {
		c := res.body[i]
		if recordStart && !quoted {
			recordStart = false
			if j := bytes.IndexByte(res.body[i:], ','); j >= 0 {
				i += j
				continue
			}
		}
		out = append(out, c)
		switch {
		case c == '"':
			quoted = !quoted
		case c == '\n' && !quoted:
			recordStart = true
		}
	}
	return string(out)
}

// TestImportCSVRoundTrip checks that the CSV export, less its id column,
// imports back byte for byte, quoted line breaks included.
func TestImportCSVRoundTrip(t *testing.T) {
	t.Parallel()
	a, b := mustEnv(t), mustEnv(t)
	names := []string{"plain", "a,comma", `a "quote"`, "crlf\r\ninside", "lf\ninside", "cr\ronly", " spaces ", "ünï €", `""`, "x"}
	mustCreate(t, a.h, names...)
	file := exportCSV(t, a.h)
	if !strings.HasPrefix(file, "name\r\n") {
		t.Fatalf("export less id: %q", file)
	}
	res := doImport(t, b.h, "text/csv; charset=utf-8; header=present", file)
	if res.status != http.StatusCreated || string(res.body) != "{\"created\":10}\n" {
		t.Fatalf("import: %d %s", res.status, res.body)
	}
	if diff := cmp.Diff(names, tableNames(t, b.pool)); diff != "" {
		t.Fatalf("names (-want +got):\n%s", diff)
	}
	if again := exportCSV(t, b.h); again != file {
		t.Fatalf("export after import:\n%q\nwant\n%q", again, file)
	}
	// LF line ends and a byte order mark are taken too.
	res = doImport(t, b.h, mediaCSV, "\uFEFFname\nlf1\n\"lf\n2\"\n")
	if res.status != http.StatusCreated {
		t.Fatalf("LF import: %d %s", res.status, res.body)
	}
	if got := tableNames(t, b.pool)[len(names):]; !cmp.Equal(got, []string{"lf1", "lf\n2"}) {
		t.Fatalf("LF import stored %q", got)
	}
}

type lineError struct {
	Line    int64  `json:"line"`
	Pointer string `json:"pointer"`
	Detail  string `json:"detail"`
}

// importProblem checks a failed import: its status, that nothing was
// stored, and returns the detail and errors.
func importProblem(t *testing.T, e *env, res response, status int) (string, []lineError) {
	t.Helper()
	problemOf(t, res, status)
	var p struct {
		Detail string      `json:"detail"`
		Errors []lineError `json:"errors"`
	}
	res.json(t, &p)
	if n := len(tableNames(t, e.pool)); n != 1 {
		t.Fatalf("%d rows in the table after a failed import, want the 1 from before", n)
	}
	return p.Detail, p.Errors
}

func TestImportErrors(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	mustCreate(t, e.h, "taken")
	long := strings.Repeat("é", 256)
	tests := []struct {
		name, media, body string
		header            []string
		status            int
		detail            string
		errors            []lineError
	}{
		{"Invalid", ndjson, "{\"name\":\"ok\"}\n{\"name\":\"\"}\n{}\n{\"name\":\"" + long + "\"}\n{\"name\":null}\n", nil, 422,
			"The import has 4 invalid line(s); nothing was stored. See errors.", []lineError{
				{2, "#/name", "name must not be empty."},
				{3, "#/name", "name is required."},
				{4, "#/name", "name has 256 characters; the most is 255."},
				{5, "#/name", "name is required."},
			}},
		{"InvalidCSV", mediaCSV, "name\r\nok\r\n\"\"\r\n\"nul\x00\"\r\n\"multi\r\nline\"\r\n\"\xff\"\r\n", nil, 422,
			"The import has 3 invalid line(s); nothing was stored. See errors.", []lineError{
				{3, "#/name", "name must not be empty."},
				{4, "#/name", "name must not contain NUL characters."},
				{7, "#/name", "name is not valid UTF-8."},
			}},
		{"Empty", ndjson, "\n\n", nil, 422, "The import has no rows.", nil},
		{"HeaderOnly", mediaCSV, "name\r\n", nil, 422, "The import has no rows.", nil},
		{"MalformedJSON", ndjson, "{\"name\":\"a\"}\n{\"name\":\"b\"\n", nil, 400,
			"Line 2: The request body is empty or ends before the JSON value does.", nil},
		{"WrongType", ndjson, "{\"name\":\"a\"}\n\n{\"name\":1}\n", nil, 400, `Line 3: Field "name" must be a string.`, nil},
		{"UnknownField", ndjson, "{\"id\":1,\"name\":\"a\"}\n", nil, 400, `Line 1: Unknown field "id": an item has only "name".`, nil},
		{"Array", ndjson, "[{\"name\":\"a\"}]\n", nil, 400, `Line 1: Each line is one object like {"name": "Bob"}.`, nil},
		{"NoHeader", mediaCSV, "", nil, 400, `A CSV import starts with the header row "name".`, nil},
		{"WrongHeader", mediaCSV, "id,name\r\n1,a\r\n", nil, 400,
			`Line 1: The CSV header must be the one column "name" (an export less its id column).`, nil},
		{"TwoFields", mediaCSV, "name\r\na\r\nb,c\r\n", nil, 400,
			"Line 3: The line has more than one field; a CSV import has the one column name.", nil},
		{"BareQuote", mediaCSV, "name\r\na\"b\r\n", nil, 400,
			"Line 2: A field with a quote or a line break must be quoted, with quotes doubled (RFC 4180).", nil},
		{"Unclosed", mediaCSV, "name\r\n\"a\r\n", nil, 400, "Line 2: The quoted field is not closed.", nil},
		{"AfterQuote", mediaCSV, "name\r\n\"a\"b\r\n", nil, 400, "Line 2: A closing quote must end the record (with CRLF or LF).", nil},
		{"Taken", ndjson, "{\"name\":\"a\"}\n{\"name\":\"b\"}\n{\"name\":\"taken\"}\n{\"name\":\"a\"}\n", nil, 409,
			"Line 3: the name is already taken; nothing was stored.", []lineError{{3, "#/name", "name is already taken."}}},
		{"Repeated", mediaCSV, "name\r\na\r\n\"multi\nline\"\r\nb\r\na\r\ntaken\r\n", nil, 409,
			"Line 6: the name is the name of line 2; nothing was stored.", []lineError{{6, "#/name", "name is already taken."}}},
		{"IdempotencyKey", ndjson, "{\"name\":\"a\"}\n", []string{"Idempotency-Key", "k1"}, 400,
			"Idempotency-Key is not supported for imports (NDJSON or CSV bodies). An import is all or nothing: after a 503, or no answer, look up one of its names with GET /tests?name= before sending it again.", nil},
		{"Parameter", "text/csv; header=absent", "name\r\na\r\n", nil, 415,
			"An import's Content-Type takes no parameter but charset=utf-8 (and, for text/csv, header=present).", nil},
		{"NotAcceptable", ndjson, "{\"name\":\"a\"}\n", []string{"Accept", mediaCSV}, 406,
			"An import answers application/json (a summary) or application/x-ndjson (the created rows).", nil},
		{"TooLong", ndjson, "{\"name\":\"a\"}\n" + strings.Repeat(" ", 70<<10) + "\n", nil, 400, "Line 2: The line is longer than 65536 bytes.", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := doImport(t, e.h, tc.media, tc.body, tc.header...)
			detail, errs := importProblem(t, e, res, tc.status)
			if detail != tc.detail {
				t.Errorf("detail %q\nwant   %q", detail, tc.detail)
			}
			if diff := cmp.Diff(tc.errors, errs); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}

// TestImportManyInvalid checks the bound on the errors listed.
func TestImportManyInvalid(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	mustCreate(t, e.h, "before")
	body := "name\r\n" + strings.Repeat("ok\r\n\"\"\r\n", 150)
	detail, errs := importProblem(t, e, doImport(t, e.h, mediaCSV, body), 422)
	if detail != "The import has 150 invalid line(s); nothing was stored. See errors for the first 100 problems." {
		t.Fatalf("detail %q", detail)
	}
	if len(errs) != 100 || errs[0].Line != 3 || errs[99].Line != 201 {
		t.Fatalf("%d errors, first %+v, last %+v", len(errs), errs[0], errs[len(errs)-1])
	}
}

func TestImportTooLarge(t *testing.T) {
	t.Parallel()
	lim := testLimits
	lim.ImportMaxBytes = 1000
	e := mustEnvURL(t, dbtest.NewSchema(t), lim)
	mustCreate(t, e.h, "before")
	var b strings.Builder
	for i := range 100 {
		b.WriteString(`{"name":"n` + strconv.Itoa(i+100) + "\"}\n")
	}
	body := b.String() // 1600 bytes
	want := "The request body is larger than the limit of 1000 bytes."
	// Announced by Content-Length, and found while reading.
	for _, length := range []int64{int64(len(body)), -1} {
		req := newRequest("POST", "/tests", body, "Content-Type", ndjson)
		req.ContentLength = length
		if length < 0 {
			req.Body = io.NopCloser(strings.NewReader(body))
		}
		if detail, _ := importProblem(t, e, serve(t, e.h, req), 413); detail != want {
			t.Fatalf("detail %q", detail)
		}
	}
	// MAX_BODY_BYTES does not apply: an import larger than it is fine.
	lim.ImportMaxBytes, lim.MaxBodyBytes = 1<<20, 100
	e = mustEnvURL(t, dbtest.NewSchema(t), lim)
	if res := doImport(t, e.h, ndjson, body[:16*20]); res.status != http.StatusCreated {
		t.Fatalf("import over MAX_BODY_BYTES: %d %s", res.status, res.body)
	}
}

// TestImportFailsWhole makes the database fail the INSERT of the staged
// rows (a trigger raising a serialization failure on one row) and checks
// that the import is a 503 that stored nothing, then that it goes in whole
// once the trigger is gone.
func TestImportFailsWhole(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	mustCreate(t, e.h, "before")
	ctx := context.Background()
	if _, err := e.pool.Exec(ctx, `
CREATE FUNCTION fail_on_boom() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name = 'boom' THEN
        RAISE EXCEPTION 'could not serialize access' USING ERRCODE = '40001';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_on_boom BEFORE INSERT ON test FOR EACH ROW EXECUTE FUNCTION fail_on_boom();`); err != nil {
		t.Fatal(err)
	}
	var body strings.Builder
	for i := range 5000 {
		body.WriteString(`{"name":"r` + strconv.Itoa(i) + "\"}\n")
	}
	body.WriteString(`{"name":"boom"}` + "\n")
	res := doImport(t, e.h, ndjson, body.String(), "Accept", ndjson)
	importProblem(t, e, res, http.StatusServiceUnavailable)
	if res.header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
	if _, err := e.pool.Exec(ctx, `DROP TRIGGER fail_on_boom ON test`); err != nil {
		t.Fatal(err)
	}
	if res := doImport(t, e.h, ndjson, body.String()); res.status != http.StatusCreated || string(res.body) != "{\"created\":5001}\n" {
		t.Fatalf("after the trigger: %d %s", res.status, res.body)
	}
}

// TestImportClientGone checks that a client that hangs up in the middle of
// its upload stores nothing.
func TestImportClientGone(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	mustCreate(t, e.h, "before")
	srv := httptest.NewServer(e.h)
	defer srv.Close()
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/tests", pr)
	req.Header.Set("Content-Type", ndjson)
	done := make(chan error, 1)
	go func() {
		res, err := srv.Client().Do(req)
		if err == nil {
			res.Body.Close()
		}
		done <- err
	}()
	for i := range 2000 {
		if _, err := pw.Write([]byte(`{"name":"g` + strconv.Itoa(i) + "\"}\n")); err != nil {
			t.Fatal(err)
		}
	}
	// The transport waits for the body's reader to return before it
	// reports the cancellation.
	cancel()
	_ = pw.CloseWithError(context.Canceled)
	if err := <-done; err == nil {
		t.Fatal("the request succeeded although the client hung up")
	}
	srv.Close() // waits for the handler
	if n := len(tableNames(t, e.pool)); n != 1 {
		t.Fatalf("%d rows after an abandoned import", n)
	}
}
