package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net/http"
	"strings"
)

// RequireToken makes the writes (POST /tests, PATCH and DELETE
// /tests/{id}) require the header "Authorization: Bearer <token>"; reads
// stay open. Without this option writes are open too.
func RequireToken(token string) Option {
	return func(o *options) { o.token = token }
}

// requireToken answers 401 with a Bearer challenge (RFC 6750) unless the
// request carries the token. The comparison is of SHA-256 digests in
// constant time, so neither the token's bytes nor its length can be timed.
// Neither the expected nor the offered token is ever logged.
func requireToken(log *slog.Logger, token string) func(http.Handler) http.Handler {
	if token == "" {
		return func(next http.Handler) http.Handler { return next }
	}
	want := sha256.Sum256([]byte(token))
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			offered, ok := bearerToken(r.Header.Values("Authorization"))
			got := sha256.Sum256([]byte(offered))
			if ok && subtle.ConstantTimeCompare(got[:], want[:]) == 1 {
				next.ServeHTTP(w, r)
				return
			}
			challenge, detail := `Bearer realm="tests"`, "This request needs an Authorization: Bearer token."
			if ok {
				challenge += `, error="invalid_token"`
				detail = "The bearer token is not valid."
			}
			w.Header().Set("WWW-Authenticate", challenge)
			respond(log, w, r, &requestError{status: http.StatusUnauthorized, detail: detail})
		})
	}
}

// bearerToken returns the token of the one Authorization header, if it uses
// the Bearer scheme (matched without regard to case, RFC 9110 §11.1).
func bearerToken(values []string) (string, bool) {
	if len(values) != 1 {
		return "", false
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	token = strings.TrimLeft(token, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", false
	}
	return token, true
}
