package api

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/ybrest/testsapi/internal/store"
)

// Listing bounds for GET /tests.
const (
	defaultLimit = 100
	maxLimit     = 1000
)

// Media types GET /tests can answer with, preferred first.
const (
	mediaJSON   = "application/json"
	mediaNDJSON = "application/x-ndjson"
	mediaCSV    = "text/csv"
)

// handleTestsCreate handles POST /tests: 201, 400, 409, 413, 415, 422, 503.
func handleTestsCreate(log *slog.Logger, st testStore, lim Limits) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := readJSONBody(w, r, lim.MaxBodyBytes)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		names, single, err := parseCreate(body, lim.MaxBatch)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		if single {
			t, err := st.Create(r.Context(), names[0])
			if err != nil {
				respond(log, w, r, err)
				return
			}
			w.Header().Set("Location", "/tests/"+strconv.Itoa(int(t.ID)))
			encode(w, http.StatusCreated, mediaJSON, t)
			return
		}
		ts, err := st.CreateMany(r.Context(), names)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		encode(w, http.StatusCreated, mediaJSON, ts)
	})
}

// handleTestsGet handles GET /tests/{id}: 200, 400, 404, 503.
func handleTestsGet(log *slog.Logger, st testStore) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := parseUint(chi.URLParam(r, "id"))
		if errors.Is(err, strconv.ErrRange) {
			// A positive integer, just larger than any id can be.
			respond(log, w, r, store.ErrNotFound)
			return
		}
		if err != nil || id == 0 {
			respond(log, w, r, badRequest("The id must be a positive integer."))
			return
		}
		t, err := st.Get(r.Context(), id)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		encode(w, http.StatusOK, mediaJSON, t)
	})
}

// handleTestsList handles GET /tests: 200, 400, 406, 503. JSON answers one
// keyset page; NDJSON and CSV stream every row from after on (or limit rows
// when limit is given) as they come from the database.
func handleTestsList(log *slog.Logger, st testStore, lim Limits) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		media := negotiate(r.Header.Get("Accept"), mediaJSON, mediaNDJSON, mediaCSV)
		if media == "" {
			respond(log, w, r, &requestError{
				status: http.StatusNotAcceptable,
				detail: "GET /tests answers application/json, application/x-ndjson or text/csv.",
			})
			return
		}
		q := r.URL.Query()
		after, limit, err := parsePage(q.Get("after"), q.Has("after"), q.Get("limit"), q.Has("limit"))
		if err != nil {
			respond(log, w, r, err)
			return
		}
		if media != mediaJSON {
			stream(log, w, r, st, media, after, limit, lim.WriteTimeout)
			return
		}
		if limit == 0 {
			limit = defaultLimit
		}
		ctx, cancel := context.WithTimeout(r.Context(), lim.RequestTimeout)
		defer cancel()
		ts, err := st.List(ctx, after, limit)
		if err != nil {
			respond(log, w, r, err)
			return
		}
		if len(ts) == limit {
			next := "/tests?after=" + strconv.Itoa(int(ts[len(ts)-1].ID)) + "&limit=" + strconv.Itoa(limit)
			w.Header().Set("Link", "<"+next+`>; rel="next"`)
		}
		encode(w, http.StatusOK, mediaJSON, ts)
	})
}

// parsePage reads the after and limit query parameters; limit 0 means it
// was not given.
func parsePage(afterS string, hasAfter bool, limitS string, hasLimit bool) (after int64, limit int, err error) {
	if hasAfter {
		a, err := parseUint(afterS)
		if err != nil {
			return 0, 0, badRequest("after must be a non-negative integer id.")
		}
		after = a
	}
	if hasLimit {
		l, err := parseUint(limitS)
		if err != nil || l < 1 || l > maxLimit {
			return 0, 0, badRequest("limit must be an integer from 1 to 1000.")
		}
		limit = int(l)
	}
	return after, limit, nil
}

// parseUint accepts only decimal digits (no sign, no spaces) up to MaxInt64.
func parseUint(s string) (int64, error) {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, strconv.ErrSyntax
		}
	}
	n, err := strconv.ParseUint(s, 10, 63)
	if err != nil || n > math.MaxInt64 {
		return 0, strconv.ErrRange
	}
	return int64(n), nil
}

// streamFlushBytes is how much output is buffered between flushes: large
// enough to amortise syscalls, small enough that memory stays flat.
const streamFlushBytes = 32 << 10

// stream writes rows as NDJSON or CSV while they are read, holding one row
// and one buffer at a time. Once the status is sent an error can no longer
// be reported as a problem: the connection is then aborted, so the client
// sees a truncated response instead of a short one that looks complete.
func stream(log *slog.Logger, w http.ResponseWriter, r *http.Request, st testStore, media string, after int64, limit int, writeTimeout time.Duration) {
	rc := http.NewResponseController(w)
	bw := bufio.NewWriterSize(w, streamFlushBytes)
	var cw *csv.Writer
	if media == mediaCSV {
		cw = csv.NewWriter(bw)
		cw.UseCRLF = true // RFC 4180
	}
	started := false
	start := func() {
		started = true
		_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if media == mediaCSV {
			w.Header().Set("Content-Type", "text/csv; charset=utf-8; header=present")
			_ = cw.Write([]string{"id", "name"})
		} else {
			w.Header().Set("Content-Type", media+"; charset=utf-8")
		}
		w.WriteHeader(http.StatusOK)
	}
	var line []byte
	err := st.Stream(r.Context(), after, limit, func(t store.Test) error {
		if !started {
			start()
		}
		if cw != nil {
			// encoding/csv quotes per RFC 4180; flushing it only moves the
			// row into bw, which decides when bytes go out.
			_ = cw.Write([]string{strconv.Itoa(int(t.ID)), t.Name})
			cw.Flush()
			if err := cw.Error(); err != nil {
				return err
			}
		} else {
			var err error
			if line, err = json.Marshal(t); err != nil {
				return err
			}
			if _, err := bw.Write(append(line, '\n')); err != nil {
				return err
			}
		}
		if bw.Buffered() >= streamFlushBytes/2 {
			// Each flush renews the write deadline: a long export is fine,
			// a client that stops reading is not.
			_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
			return bw.Flush()
		}
		return nil
	})
	if err != nil && !started {
		respond(log, w, r, err)
		return
	}
	if !started {
		start() // an empty table: just the CSV header or nothing
	}
	if cw != nil {
		cw.Flush()
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		logError(log, r, http.StatusOK, err)
		panic(http.ErrAbortHandler)
	}
}
