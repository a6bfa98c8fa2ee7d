package api

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/cespare/xxhash/v2"
)

// Conditional requests (RFC 9110 §13). A representation's ETag is a hash
// of its bytes, so it is strong (it changes whenever a byte does) and the
// same on every replica without being stored anywhere. xxhash is fast
// (pages of 100 rows are hashed on every GET) and 64 bits: two versions of
// one row share an ETag with odds of 1 in 2^64, which no client can steer
// to its advantage, since it can only fool its own If-Match.

// etagOf returns the strong ETag of the representation body.
func etagOf(body []byte) string {
	var b [20]byte
	e := append(b[:0], '"')
	e = strconv.AppendUint(e, xxhash.Sum64(body), 16)
	return string(append(e, '"'))
}

// etagList splits an If-Match or If-None-Match value into its entity tags,
// or reports "*"; a malformed list gives ok false. Empty list elements
// (", ,") are skipped, as RFC 9110 §5.6.1.2 requires of a recipient: a
// sender or proxy that merges fields leaves them.
func etagList(v string) (tags []string, any, ok bool) {
	v = strings.TrimSpace(v)
	if v == "*" {
		return nil, true, true
	}
	for v != "" {
		if v[0] == ',' {
			v = strings.TrimLeft(v[1:], " \t")
			continue
		}
		weak := strings.HasPrefix(v, "W/")
		rest := strings.TrimPrefix(v, "W/")
		if !strings.HasPrefix(rest, `"`) {
			return nil, false, false
		}
		end := strings.IndexByte(rest[1:], '"')
		if end < 0 {
			return nil, false, false
		}
		tag := rest[:end+2]
		if weak {
			tag = "W/" + tag
		}
		tags = append(tags, tag)
		v = strings.TrimLeft(rest[end+2:], " \t")
		if v != "" && v[0] != ',' {
			return nil, false, false
		}
	}
	return tags, false, len(tags) > 0
}

// baseTag is tag less the suffix that marks a compressed representation's
// ETag ("abc-gzip", "abc-zstd"; see compressAnswers): a compressed page
// has a strong ETag of its own, as RFC 9110 §8.8.3 asks of a different
// representation, and it validates the same state as the identity one.
func baseTag(tag string) string {
	for _, suffix := range []string{etagGzipSuffix, "-zstd"} {
		if t, ok := strings.CutSuffix(tag, suffix+`"`); ok {
			return t + `"`
		}
	}
	return tag
}

// notModified returns the entity tag of r's If-None-Match that names etag
// (the weak comparison of RFC 9110 §8.8.3.2: a W/ prefix does not matter,
// nor does the suffix of a compressed representation), in which case the
// answer is a 304 carrying that tag, so that a cache holding the
// compressed representation, or the identity one, is told to use what it
// has; "" when none does.
func notModified(r *http.Request, etag string) string {
	h := r.Header.Values("If-None-Match")
	if len(h) == 0 {
		return ""
	}
	tags, any, ok := etagList(strings.Join(h, ","))
	if !ok {
		return "" // a malformed condition is ignored, as RFC 9110 allows
	}
	if any {
		return etag
	}
	for _, t := range tags {
		if t = strings.TrimPrefix(t, "W/"); baseTag(t) == etag {
			return t
		}
	}
	return ""
}

// ifMatch returns the condition of r's If-Match header on the current
// representation's ETag (the strong comparison: a weak tag never matches;
// the ETag of a compressed representation of it does), or nil when r has
// none. A malformed header is a 400.
func ifMatch(r *http.Request) (func(etag string) bool, error) {
	h := r.Header.Values("If-Match")
	if len(h) == 0 {
		return nil, nil
	}
	tags, any, ok := etagList(strings.Join(h, ","))
	if !ok {
		return nil, badRequest(`If-Match must be "*" or a list of entity tags such as "5f0c2d1e".`)
	}
	return func(etag string) bool {
		if any {
			return true
		}
		for _, t := range tags {
			if baseTag(t) == etag {
				return true
			}
		}
		return false
	}, nil
}

// writeNotModified answers a 304 for etag: no body, the ETag and whatever
// other headers the 200 would have carried (already set on w).
func writeNotModified(w http.ResponseWriter, etag string) {
	w.Header().Set("ETag", etag)
	w.WriteHeader(http.StatusNotModified)
}

// writeTagged answers body with its ETag, or a 304 when r already has it.
func writeTagged(w http.ResponseWriter, r *http.Request, contentType string, body []byte) {
	etag := etagOf(body)
	if tag := notModified(r, etag); tag != "" {
		writeNotModified(w, tag)
		return
	}
	w.Header().Set("ETag", etag)
	writeBody(w, http.StatusOK, contentType, body)
}
