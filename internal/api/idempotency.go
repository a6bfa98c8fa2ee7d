package api

import (
	"bytes"
	"crypto/sha256"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ybrest/testsapi/internal/store"
)

// defaultIdempotencyTTL is how long an Idempotency-Key is remembered unless
// IdempotencyTTL says otherwise.
const defaultIdempotencyTTL = 24 * time.Hour

// maxIdempotencyKeyLength bounds a key, which is stored with its answer.
const maxIdempotencyKeyLength = 255

// IdempotencyTTL sets how long an Idempotency-Key is remembered after its
// first use; then the key may be used afresh.
func IdempotencyTTL(d time.Duration) Option {
	return func(o *options) { o.idempotencyTTL = d }
}

// idempotencyKey returns the request's Idempotency-Key header
// (draft-ietf-httpapi-idempotency-key-header), "" when it has none. The
// value is an opaque key of 1 to 255 printable ASCII characters (the
// draft's quoted form, "...", is such a value too); anything else, or the
// header twice, is a 400.
func idempotencyKey(r *http.Request) (string, error) {
	vs := r.Header.Values("Idempotency-Key")
	switch len(vs) {
	case 0:
		return "", nil
	case 1:
	default:
		return "", badRequest("Send at most one Idempotency-Key header.")
	}
	k := vs[0]
	bad := k == "" || len(k) > maxIdempotencyKeyLength
	for i := 0; i < len(k) && !bad; i++ {
		bad = k[i] < 0x20 || k[i] > 0x7e
	}
	if bad {
		return "", badRequest("Idempotency-Key must be 1 to 255 printable ASCII characters.")
	}
	return k, nil
}

// fingerprint identifies what a create asks for, so that a retry with the
// same key can be told from a different request reusing it. It is taken of
// the decoded request, not its bytes: a retry may format the JSON
// differently. NUL cannot occur in a valid name, so it separates them.
func fingerprint(names []string, single bool) []byte {
	h := sha256.New()
	h.Write([]byte("POST /tests\x00"))
	if single {
		h.Write([]byte("object\x00"))
	} else {
		h.Write([]byte("array\x00"))
	}
	h.Write([]byte(strings.Join(names, "\x00")))
	return h.Sum(nil)
}

// createOnce answers a keyed POST /tests: the store creates the rows at
// most once per key and keeps the answer, which this request and every
// retry with the same key and body get byte for byte.
func createOnce(log *slog.Logger, w http.ResponseWriter, r *http.Request, st testStore, k store.KeyedCreate, single bool) {
	resp, err := st.CreateOnce(r.Context(), k, func(created []store.Test, err error) store.Response {
		return record(func(rec http.ResponseWriter) {
			if err != nil {
				respond(log, rec, r, err)
			} else {
				writeCreated(rec, created, single)
			}
		})
	})
	writeKept(log, w, r, resp, err)
}

// renameFingerprint identifies what a rename asks for, If-Match included:
// the same key with another condition is another request.
func renameFingerprint(id int64, name string, ifMatch []string) []byte {
	h := sha256.New()
	h.Write([]byte("PATCH /tests/" + strconv.FormatInt(id, 10) + "\x00" + name + "\x00"))
	h.Write([]byte(strings.Join(ifMatch, ",")))
	return h.Sum(nil)
}

// renameOnce answers a keyed PATCH /tests/{id} as createOnce answers a
// keyed POST.
func renameOnce(log *slog.Logger, w http.ResponseWriter, r *http.Request, st testStore, k store.KeyedRename) {
	resp, err := st.RenameOnce(r.Context(), k, func(t store.Test, err error) store.Response {
		return record(func(rec http.ResponseWriter) {
			if err != nil {
				respond(log, rec, r, err)
			} else {
				writeRenamed(rec, t)
			}
		})
	})
	writeKept(log, w, r, resp, err)
}

// record runs write on a recorder and returns what it wrote, to be kept.
func record(write func(w http.ResponseWriter)) store.Response {
	rec := &recorder{header: http.Header{}}
	write(rec)
	return store.Response{
		Status:      rec.status,
		ContentType: rec.header.Get("Content-Type"),
		Location:    rec.header.Get("Location"),
		Body:        rec.body.Bytes(),
	}
}

// writeKept answers a keyed request with its kept answer, or err. A kept
// 200 is a renamed row, whose ETag is that of its body.
func writeKept(log *slog.Logger, w http.ResponseWriter, r *http.Request, resp store.Response, err error) {
	if err != nil {
		respond(log, w, r, err)
		return
	}
	if resp.Location != "" {
		w.Header().Set("Location", resp.Location)
	}
	if resp.Status == http.StatusOK {
		w.Header().Set("ETag", etagOf(resp.Body))
	}
	w.Header().Set("Content-Type", resp.ContentType)
	w.WriteHeader(resp.Status)
	_, _ = w.Write(resp.Body)
}

// recorder keeps a response in memory, so that it can be stored.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(status int) { r.status = status }

func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
