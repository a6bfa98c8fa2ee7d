package api

import (
	"context"
	"crypto/rand"
	"net/http"

	"github.com/go-chi/chi/v5/middleware"
)

// maxRequestIDLength bounds a client's X-Request-Id: it is echoed in the
// response and written to every log line of the request.
const maxRequestIDLength = 64

// requestID gives each request its id: the client's X-Request-Id when it is
// one short token of safe characters, otherwise a fresh random one (chi's
// middleware.RequestID echoes any value, however long, and generates ids
// that carry the host name). The id is stored where middleware.GetReqID
// finds it.
func requestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ids := r.Header.Values("X-Request-Id")
		id := ""
		if len(ids) == 1 && safeRequestID(ids[0]) {
			id = ids[0]
		} else {
			id = rand.Text()
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), middleware.RequestIDKey, id)))
	})
}

// safeRequestID reports whether id is 1 to maxRequestIDLength letters,
// digits, '-', '_', '.' or ':' (enough for UUIDs, ULIDs and trace ids).
func safeRequestID(id string) bool {
	if id == "" || len(id) > maxRequestIDLength {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_', c == '.', c == ':':
		default:
			return false
		}
	}
	return true
}
