package api

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/go-chi/chi/v5/middleware"
	"github.com/ybrest/testsapi/internal/metrics"
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
				log.LogAttrs(r.Context(), slog.LevelInfo, "request",
					slog.String("request_id", middleware.GetReqID(r.Context())),
					slog.String("method", r.Method),
					slog.String("route", route),
					slog.Int("status", status),
					slog.Int("bytes", ww.BytesWritten()),
					slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
				)
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
