package api

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/go-chi/chi/v5/middleware"
	"github.com/ybrest/testsapi/internal/metrics"
	"go.opentelemetry.io/otel/trace"
)

// secureHeaders sets headers every response carries. No Server header is
// ever sent, so the service does not advertise its version.
func secureHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Request-Id", middleware.GetReqID(r.Context()))
		next.ServeHTTP(w, r)
	})
}

// accessLog writes one JSON line per request: request id, method, route
// pattern (not the raw path, which would leak ids into log cardinality),
// status, bytes and duration.
func accessLog(log *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
			defer func() {
				status := ww.Status()
				if status == 0 {
					status = http.StatusOK // a handler that wrote nothing (or aborted before writing)
				}
				route := metrics.Route(r)
				// Room for trace_id, so that adding it does not allocate.
				attrs := append(make([]slog.Attr, 0, 7),
					slog.String("request_id", middleware.GetReqID(r.Context())),
					slog.String("method", r.Method),
					slog.String("route", route),
					slog.Int("status", status),
					slog.Int("bytes", ww.BytesWritten()),
					slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
				)
				// The trace this request is part of (Tracing), sampled or
				// not, so that its log line and its spans join.
				if sc := trace.SpanContextFromContext(r.Context()); sc.IsValid() {
					attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()))
				}
				log.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
			}()
			next.ServeHTTP(ww, r)
		})
	}
}

// recoverer turns a panic into a logged 500 problem, or into an aborted
// connection when the response had already begun. http.ErrAbortHandler
// passes through: it is how a handler asks for exactly that.
func recoverer(log *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ww, ok := w.(middleware.WrapResponseWriter)
			if !ok {
				ww = middleware.NewWrapResponseWriter(w, r.ProtoMajor)
			}
			defer func() {
				rec := recover()
				if rec == nil {
					return
				}
				if rec == http.ErrAbortHandler {
					panic(rec)
				}
				log.LogAttrs(r.Context(), slog.LevelError, "panic",
					slog.String("request_id", middleware.GetReqID(r.Context())),
					slog.String("panic", fmt.Sprint(rec)),
					slog.String("stack", string(debug.Stack())))
				if ww.Status() != 0 {
					panic(http.ErrAbortHandler) // the response has begun: cut it
				}
				writeProblem(ww, http.StatusInternalServerError, "An internal error occurred.", nil)
			}()
			next.ServeHTTP(ww, r)
		})
	}
}

// timeout bounds the work of a request, the database call included: the
// context is cancelled at d and pgx cancels the statement on the server.
func timeout(d time.Duration) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), d)
			defer cancel()
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

// How long, and how much, lingerBody reads of a body the handler left
// unread. 2 s is enough for a client on a fast link to finish sending a
// body several times MAX_BODY_BYTES (the 13 MB of issue 12 takes well
// under a second on a LAN); 64 MiB bounds what one request can make the
// server read and drop at the most, whatever the client sends.
const (
	lingerTime  = 2 * time.Second
	lingerBytes = 64 << 20
)

// lingerBody makes the answer to a request whose body the handler left
// unread reach the client: it flushes the answer, then reads and drops the
// rest of the body for at most lingerTime and lingerBytes before the
// connection closes, as nginx's lingering close does. net/http alone drops
// at most 256 KiB of an unread body, then closes the connection; closing a
// socket with unread data makes the kernel reset the connection, and a
// client that sends its whole body before reading the answer (Python's
// http.client and urllib, among others) gets "connection reset by peer"
// instead of the 413, 401 or 415 that says what is wrong.
func lingerBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r)
			return
		}
		body := &eofReader{ReadCloser: r.Body}
		r.Body = body
		next.ServeHTTP(w, r)
		if body.eof {
			return // the common case: the handler read it all
		}
		rc := http.NewResponseController(w)
		if rc.Flush() != nil || rc.SetReadDeadline(time.Now().Add(lingerTime)) != nil {
			return
		}
		_, _ = io.CopyN(io.Discard, body, lingerBytes)
	})
}

// eofReader is a request body that records whether it was read to its end.
type eofReader struct {
	io.ReadCloser
	eof bool
}

func (b *eofReader) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.eof = b.eof || err == io.EOF
	return n, err
}
