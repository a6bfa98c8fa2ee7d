package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"

	"github.com/go-chi/chi/v5/middleware"
	"github.com/ybrest/testsapi/internal/store"
)

// problem is an RFC 9457 problem details object. Type is always
// "about:blank": the status says what happened, Detail says it for people.
type problem struct {
	Type   string       `json:"type"`
	Title  string       `json:"title"`
	Status int          `json:"status"`
	Detail string       `json:"detail"`
	Errors []fieldError `json:"errors,omitempty"`
}

// fieldError is one problem with the request body: Pointer is a JSON
// Pointer into the body as a URI fragment ("#/0/name"; "#" is the body).
// In an import (NDJSON or CSV) Line is the 1-based line of the body where
// the item starts, and Pointer points into that item.
type fieldError struct {
	Line    int64  `json:"line,omitempty"`
	Pointer string `json:"pointer"`
	Detail  string `json:"detail"`
}

// requestError is a problem with the request itself: handlers return it and
// respond turns it into its status and detail.
type requestError struct {
	status int
	detail string
	errors []fieldError
}

func (e *requestError) Error() string { return e.detail }

func badRequest(detail string) error {
	return &requestError{status: http.StatusBadRequest, detail: detail}
}

// retryAfter is the Retry-After value (seconds) sent with every 503: the
// pool reconnects within about a second of the database's return.
const retryAfter = "1"

// respond writes err as a problem. It is the one place that chooses a status
// for an error; the text of errors from the store or the driver never
// reaches the client, only a fixed detail per status, and only 5xx are
// logged (with the request id to match the access log).
func respond(log *slog.Logger, w http.ResponseWriter, r *http.Request, err error) {
	var reqErr *requestError
	var tooBig *http.MaxBytesError
	var atLine *store.LineConflictError
	var badGzip *codingError
	switch {
	case errors.As(err, &reqErr):
		writeProblem(w, reqErr.status, reqErr.detail, reqErr.errors)
	case errors.As(err, &tooBig):
		writeProblem(w, http.StatusRequestEntityTooLarge,
			"The request body is larger than the limit of "+itoa(tooBig.Limit)+" bytes.", nil)
	case errors.Is(err, errUnknownCoding):
		// RFC 9110 §15.5.16: say which codings would do.
		w.Header().Set("Accept-Encoding", "gzip")
		writeProblem(w, http.StatusUnsupportedMediaType,
			"Content-Encoding must be gzip (or identity, or none): the request body cannot be decoded.", nil)
	case errors.As(err, &badGzip):
		writeProblem(w, http.StatusBadRequest,
			"The request body is not valid gzip, as its Content-Encoding says it is.", nil)
	case errors.Is(err, store.ErrKeyInFlight):
		w.Header().Set("Retry-After", retryAfter)
		writeProblem(w, http.StatusConflict,
			"A request with this Idempotency-Key is still being processed; retry shortly.", nil)
	case errors.Is(err, store.ErrKeyReused):
		writeProblem(w, http.StatusUnprocessableEntity,
			"This Idempotency-Key was already used with a different request body.", nil)
	case errors.As(err, &atLine):
		writeProblem(w, http.StatusConflict, "Line "+itoa(atLine.Line)+": "+conflictDetail(atLine)+"; nothing was stored.",
			[]fieldError{{Pointer: "#/name", Detail: "name is already taken.", Line: atLine.Line}})
	case errors.Is(err, store.ErrConflict):
		writeProblem(w, http.StatusConflict,
			"A name in the request is already taken; nothing was stored.", nil)
	case errors.Is(err, store.ErrNotFound):
		writeProblem(w, http.StatusNotFound, "No test has this id.", nil)
	case errors.Is(err, store.ErrPreconditionFailed):
		writeProblem(w, http.StatusPreconditionFailed,
			"The test has changed: its ETag is not one If-Match names. Read it again, then retry.", nil)
	case errors.Is(err, store.ErrCursorGone):
		writeProblem(w, http.StatusGone,
			"The changes after this cursor are no longer kept: read the table again (GET /tests), then follow the feed from there.", nil)
	case errors.Is(err, store.ErrCursorUnknown):
		writeProblem(w, http.StatusBadRequest, "The cursor (Last-Event-ID) must be an event id of this feed.", nil)
	case errors.Is(err, store.ErrFeedNotReady):
		writeProblem(w, http.StatusServiceUnavailable,
			"The change feed is starting: no instance records changes yet; retry shortly.", nil)
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, context.Canceled) && !clientGone(r):
		// A cancel the client did not cause (a statement cut off by the
		// service's own timer or by a shared query everyone else left) is
		// the database being too slow, like a deadline.
		// A warning, not an error: it is expected while the database is
		// away, and readiness probes would otherwise flood the error log.
		log.LogAttrs(r.Context(), slog.LevelWarn, "database unavailable",
			slog.String("request_id", middleware.GetReqID(r.Context())),
			slog.String("error", err.Error()))
		writeProblem(w, http.StatusServiceUnavailable,
			"The database is unavailable or too slow right now; retry shortly.", nil)
	case errors.Is(err, context.Canceled):
		// The client is gone (clientGone); the status is for the access
		// log only.
		writeProblem(w, 499, "The request was cancelled.", nil)
	default:
		logError(log, r, http.StatusInternalServerError, err)
		writeProblem(w, http.StatusInternalServerError, "An internal error occurred.", nil)
	}
}

// clientGone reports whether r's client closed its connection: net/http
// then cancels the request's context. Its deadline passing (the timeout
// middleware) is DeadlineExceeded, not Canceled, and a client that is
// still there never gets a 499.
func clientGone(r *http.Request) bool {
	return errors.Is(r.Context().Err(), context.Canceled)
}

// conflictDetail says why an import's line conflicts.
func conflictDetail(c *store.LineConflictError) string {
	if c.FirstLine > 0 {
		return "the name is the name of line " + itoa(c.FirstLine)
	}
	return "the name is already taken"
}

func logError(log *slog.Logger, r *http.Request, status int, err error) {
	log.LogAttrs(r.Context(), slog.LevelError, "request failed",
		slog.String("request_id", middleware.GetReqID(r.Context())),
		slog.Int("status", status),
		slog.String("error", err.Error()))
}

func writeProblem(w http.ResponseWriter, status int, detail string, errs []fieldError) {
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", retryAfter)
	}
	title := http.StatusText(status)
	if title == "" {
		title = "Client Closed Request"
	}
	encode(w, status, "application/problem+json", problem{
		Type:   "about:blank",
		Title:  title,
		Status: status,
		Detail: detail,
		Errors: errs,
	})
}
