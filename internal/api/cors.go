package api

import (
	"net/http"

	"github.com/rs/cors"
)

// CORS lets pages from origins (scheme://host[:port], or "*" for any) call
// the API from a browser: actual requests get Access-Control-Allow-Origin
// and the headers a client reads exposed, and preflights (OPTIONS with
// Access-Control-Request-Method) are answered per the Fetch standard.
// Without this option no CORS header is sent and browsers keep other
// origins out, as they do by default.
//
// github.com/rs/cors rather than our own: it implements the Fetch
// standard's preflight checks (request method and each requested header
// against the lists, Vary on the request headers that decide), is kept up
// to date (v1.11 reworked preflight handling to follow the standard
// strictly) and is what go-chi/cors was forked from, which has had little
// change since.
func CORS(origins []string) Option {
	return func(o *options) { o.corsOrigins = origins }
}

// corsMaxAge is how long (seconds) a browser may reuse a preflight's
// answer; Chromium caps it at 2 hours.
const corsMaxAge = 600

// cors returns the CORS middleware, or nil when CORS is off.
func (o *options) cors() func(http.Handler) http.Handler {
	if len(o.corsOrigins) == 0 {
		return nil
	}
	c := cors.New(cors.Options{
		AllowedOrigins: o.corsOrigins,
		AllowedMethods: []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPatch, http.MethodDelete},
		// The request headers the API reads; Accept is safelisted.
		AllowedHeaders: []string{"Content-Type", "Authorization", "Idempotency-Key", "If-Match", "If-None-Match", "Prefer", "X-Request-Id"},
		// The response headers a client needs besides the safelisted ones.
		ExposedHeaders: []string{"Location", "Link", "ETag", "Retry-After", "X-Request-Id", "WWW-Authenticate"},
		MaxAge:         corsMaxAge,
		// Preflights go on to the router, whose OPTIONS routes answer
		// them (204, with Allow): so they are logged and counted under
		// their route like any request.
		OptionsPassthrough: true,
	})
	return c.Handler
}

// handleOptions handles OPTIONS on a resource (a CORS preflight, or a
// client asking what the resource allows): 204 with Allow.
func handleOptions(allow func(path string) string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow(r.URL.Path))
		w.WriteHeader(http.StatusNoContent)
	})
}
