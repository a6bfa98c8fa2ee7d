package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/ybrest/testsapi/internal/store"
)

// defaultReadyTimeout bounds the database ping of GET /readyz when
// Limits.ReadyTimeout is zero: an orchestrator probing readiness wants a
// quick no, not a hung probe.
const defaultReadyTimeout = 2 * time.Second

type status struct {
	Status string `json:"status"`
}

// handleHealthz handles GET /healthz: 200 while the process runs. It does
// not touch the database, so a database outage does not restart the service.
func handleHealthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		encode(w, http.StatusOK, "application/json", status{"ok"})
	})
}

// handleReadyz handles GET /readyz: 200 when a database ping succeeds
// within d, else 503 with Retry-After. d bounds the whole ping, the wait
// for a connection and the round trip on it: a connection that is taken
// while the database has gone silent would otherwise hold the probe until
// its round trip gave up.
func handleReadyz(log *slog.Logger, st testStore, d time.Duration) http.Handler {
	if d <= 0 {
		d = defaultReadyTimeout
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		if err := st.Ping(ctx); err != nil {
			// Whatever the cause, the answer to "ready?" is no.
			if !errors.Is(err, store.ErrUnavailable) {
				err = fmt.Errorf("%w: %w", store.ErrUnavailable, err)
			}
			respond(log, w, r, err)
			return
		}
		encode(w, http.StatusOK, "application/json", status{"ok"})
	})
}

// handleOpenAPI handles GET /openapi.yaml: 200 with the embedded spec.
func handleOpenAPI(spec []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(spec)
	})
}
