package api_test

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestListEmpty(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	res := do(t, e.h, "GET", "/tests", "")
	if res.status != http.StatusOK || string(bytes.TrimSpace(res.body)) != "[]" {
		t.Fatalf("got %d %q, want 200 []", res.status, res.body)
	}
	if l := res.header.Get("Link"); l != "" {
		t.Fatalf("empty list sent Link %q", l)
	}
}

// TestListPages walks the table page by page through the Link headers.
func TestListPages(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	var want []test
	for i := range 7 {
		want = append(want, mustCreate(t, e.h, fmt.Sprintf("n%02d", i))...)
	}
	var got []test
	next := "/tests?limit=3"
	var links []string
	for next != "" {
		res := do(t, e.h, "GET", next, "")
		if res.status != http.StatusOK {
			t.Fatalf("GET %s: %d %s", next, res.status, res.body)
		}
		var page []test
		res.json(t, &page)
		got = append(got, page...)
		next = ""
		if l := res.header.Get("Link"); l != "" {
			links = append(links, l)
			var target string
			if _, err := fmt.Sscanf(l, "<%s", &target); err != nil {
				t.Fatalf("Link %q: %v", l, err)
			}
			next = target[:len(target)-2] // drop ">;"
		}
		if len(links) > 10 {
			t.Fatal("pagination does not end")
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("rows (-want +got):\n%s", diff)
	}
	wantLinks := []string{
		`</tests?after=` + strconv.Itoa(int(want[2].ID)) + `&limit=3>; rel="next"`,
		`</tests?after=` + strconv.Itoa(int(want[5].ID)) + `&limit=3>; rel="next"`,
	}
	if diff := cmp.Diff(wantLinks, links); diff != "" {
		t.Fatalf("Link headers (-want +got):\n%s", diff)
	}
}

// TestListOrder checks that listings follow id, not insertion or name order.
func TestListOrder(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	// Explicit ids out of order, as another client of the table might write them.
	if _, err := e.pool.Exec(t.Context(), `INSERT INTO test (id, name) VALUES (50, 'z'), (10, 'y'), (30, 'x')`); err != nil {
		t.Fatal(err)
	}
	var got []test
	do(t, e.h, "GET", "/tests", "").json(t, &got)
	want := []test{{10, "y"}, {30, "x"}, {50, "z"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	do(t, e.h, "GET", "/tests?after=10&limit=1", "").json(t, &got)
	if diff := cmp.Diff(want[1:2], got); diff != "" {
		t.Fatalf("after=10&limit=1 (-want +got):\n%s", diff)
	}
	do(t, e.h, "GET", "/tests?after=9223372036854775807", "").json(t, &got)
	if len(got) != 0 {
		t.Fatalf("after=max: %v", got)
	}
}

func TestListDefaultLimit(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	names := make([]string, 101)
	for i := range names {
		names[i] = "row" + strconv.Itoa(i)
	}
	created := mustCreate(t, e.h, names...)
	res := do(t, e.h, "GET", "/tests", "")
	var got []test
	res.json(t, &got)
	if len(got) != 100 {
		t.Fatalf("%d rows, want the default 100", len(got))
	}
	if l, want := res.header.Get("Link"), `</tests?after=`+strconv.Itoa(int(created[99].ID))+`&limit=100>; rel="next"`; l != want {
		t.Fatalf("Link %q, want %q", l, want)
	}
}

func TestListBadQuery(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	for _, q := range []string{"limit=0", "limit=1001", "limit=-1", "limit=abc", "limit=", "limit=1.5", "limit=+5",
		"after=-1", "after=abc", "after=", "after=1e3", "after=99999999999999999999", "limit=%20100"} {
		t.Run(q, func(t *testing.T) {
			problemOf(t, do(t, e.h, "GET", "/tests?"+q, ""), http.StatusBadRequest)
		})
	}
	for _, q := range []string{"limit=1&limit=2", "after=1&after=2", "limit=%zz", "limit=abc;x"} {
		t.Run(q, func(t *testing.T) {
			problemOf(t, do(t, e.h, "GET", "/tests?"+q, ""), http.StatusBadRequest)
		})
	}
	for _, q := range []string{"limit=1", "limit=1000", "after=0", "after=2147483648"} {
		t.Run(q, func(t *testing.T) {
			if res := do(t, e.h, "GET", "/tests?"+q, ""); res.status != http.StatusOK {
				t.Fatalf("%d %s", res.status, res.body)
			}
		})
	}
}

// awkwardNames need quoting or escaping in CSV and JSON.
var awkwardNames = []string{"plain", `with "quotes"`, "comma, here", "line\nbreak", "crlf\r\nbreak", "cr\ronly", " lead space", "é😀", `<tag>&amp;`}

func TestListNDJSON(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	names := append([]string{}, awkwardNames...)
	for i := range 150 { // more than a JSON page
		names = append(names, "bulk"+strconv.Itoa(i))
	}
	want := mustCreate(t, e.h, names...)

	res := do(t, e.h, "GET", "/tests", "", "Accept", "application/x-ndjson")
	if res.status != http.StatusOK {
		t.Fatalf("%d %s", res.status, res.body)
	}
	if v := res.header.Get("Vary"); v != "Accept" {
		t.Fatalf("Vary %q, want Accept: the same URL answers several media types", v)
	}
	if ct := res.header.Get("Content-Type"); ct != "application/x-ndjson; charset=utf-8" {
		t.Fatalf("Content-Type %q", ct)
	}
	if diff := cmp.Diff(want, parseNDJSON(t, res.body)); diff != "" {
		t.Fatalf("whole table (-want +got):\n%s", diff)
	}

	res = do(t, e.h, "GET", "/tests?after="+strconv.Itoa(int(want[2].ID))+"&limit=4", "", "Accept", "application/x-ndjson")
	if diff := cmp.Diff(want[3:7], parseNDJSON(t, res.body)); diff != "" {
		t.Fatalf("after & limit (-want +got):\n%s", diff)
	}
}

func parseNDJSON(t *testing.T, body []byte) []test {
	t.Helper()
	var out []test
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		var row test
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&row); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, row)
	}
	return out
}

func TestListCSV(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	want := mustCreate(t, e.h, awkwardNames...)

	res := do(t, e.h, "GET", "/tests", "", "Accept", "text/csv")
	if res.status != http.StatusOK {
		t.Fatalf("%d %s", res.status, res.body)
	}
	if ct := res.header.Get("Content-Type"); ct != "text/csv; charset=utf-8; header=present" {
		t.Fatalf("Content-Type %q", ct)
	}
	if !bytes.HasPrefix(res.body, []byte("id,name\r\n")) {
		t.Fatalf("body starts %q, want the header and CRLF", res.body[:min(len(res.body), 20)])
	}
	if !bytes.Contains(res.body, []byte(`,"with ""quotes"""`+"\r\n")) {
		t.Fatalf("quotes not doubled inside quotes (RFC 4180): %q", res.body)
	}
	// Byte for byte: line breaks inside quoted names stay as stored.
	var wantBody bytes.Buffer
	wantBody.WriteString("id,name\r\n")
	for _, w := range want {
		name := w.Name
		if strings.ContainsAny(name, ",\"\r\n") {
			name = `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
		}
		fmt.Fprintf(&wantBody, "%d,%s\r\n", w.ID, name)
	}
	if diff := cmp.Diff(wantBody.String(), string(res.body)); diff != "" {
		t.Fatalf("CSV (-want +got):\n%s", diff)
	}
	// And a standard CSV reader gets the rows back (it reads CRLF inside
	// a quoted field as LF, as RFC 4180 readers may).
	records, err := csv.NewReader(bytes.NewReader(res.body)).ReadAll()
	if err != nil || len(records) != len(want)+1 || records[2][1] != want[1].Name {
		t.Fatalf("encoding/csv reads %q, %v", records, err)
	}

	empty := mustEnv(t)
	res = do(t, empty.h, "GET", "/tests", "", "Accept", "text/csv")
	if string(res.body) != "id,name\r\n" {
		t.Fatalf("empty table CSV %q, want just the header", res.body)
	}
}

func TestListNegotiation(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	mustCreate(t, e.h, "a")
	tests := []struct {
		accept string
		want   string // Content-Type media type, or "406"
	}{
		{"", "application/json"},
		{"*/*", "application/json"},
		{"application/*", "application/json"},
		{"application/json", "application/json"},
		{"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "application/json"},
		{"application/x-ndjson", "application/x-ndjson"},
		{"text/csv", "text/csv"},
		{"text/*", "text/csv"},
		{"application/json;q=0.5, text/csv", "text/csv"},
		{"application/x-ndjson;q=0.9, application/json;q=0.1", "application/x-ndjson"},
		{"text/csv;q=0", "406"},
		{"text/html", "406"},
		{"image/png, text/plain", "406"},
	}
	for _, tc := range tests {
		t.Run(tc.accept, func(t *testing.T) {
			res := do(t, e.h, "GET", "/tests", "", "Accept", tc.accept)
			if tc.want == "406" {
				problemOf(t, res, http.StatusNotAcceptable)
				return
			}
			if res.status != http.StatusOK {
				t.Fatalf("%d %s", res.status, res.body)
			}
			if ct := res.header.Get("Content-Type"); !bytes.HasPrefix([]byte(ct), []byte(tc.want)) {
				t.Fatalf("Content-Type %q, want %s", ct, tc.want)
			}
		})
	}
}

func TestGet(t *testing.T) {
	t.Parallel()
	e := mustEnv(t)
	bob := mustCreate(t, e.h, "Bob")[0]
	var got test
	res := do(t, e.h, "GET", "/tests/"+strconv.Itoa(int(bob.ID)), "")
	if res.status != http.StatusOK {
		t.Fatalf("%d %s", res.status, res.body)
	}
	res.json(t, &got)
	if got != bob {
		t.Fatalf("got %+v, want %+v", got, bob)
	}
	for _, id := range []string{strconv.Itoa(int(bob.ID) + 1), "2147483647", "2147483648", "99999999999999999999"} {
		t.Run("NotFound"+id, func(t *testing.T) {
			problemOf(t, do(t, e.h, "GET", "/tests/"+id, ""), http.StatusNotFound)
		})
	}
	for _, id := range []string{"0", "-1", "abc", "1.5", "+1", "1e3", "%20"} {
		t.Run("BadID"+id, func(t *testing.T) {
			problemOf(t, do(t, e.h, "GET", "/tests/"+id, ""), http.StatusBadRequest)
		})
	}
}
