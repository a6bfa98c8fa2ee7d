package api

import (
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"

	"github.com/klauspost/compress/gzhttp"
	"github.com/klauspost/compress/gzip"
)

// Compressed answers (RFC 9110 §8.4) are gzhttp's (klauspost/compress): it
// negotiates Accept-Encoding, waits for minBytes of an answer before it
// decides (smaller ones go as they are), adds Vary: Accept-Encoding,
// compresses each flush into a chunk of its own (so exports still stream)
// and gives a compressed representation an ETag of its own. It is not
// written here because that negotiation, the buffering decision and the
// writer pools are what it is for, and well tested.

// etagGzipSuffix marks the ETag of a gzip representation ("abc-gzip");
// gzhttp makes it "-zstd" for zstd. baseTag strips either.
const etagGzipSuffix = "-gzip"

// Compress turns on compressed answers in gzip, zstd or both (zstd
// preferred at equal q, as gzhttp does), for answers of at least minBytes.
func Compress(minBytes int, gzip, zstd bool) Option {
	return func(o *options) {
		o.compress = compressAnswers(minBytes, gzip, zstd)
	}
}

// compressAnswers is the compression middleware.
func compressAnswers(minBytes int, gzip, zstd bool) func(http.Handler) http.Handler {
	wrap, err := gzhttp.NewWrapper(
		gzhttp.MinSize(minBytes),
		gzhttp.EnableGzip(gzip),
		gzhttp.EnableZstd(zstd),
		gzhttp.SuffixETag(etagGzipSuffix),
		gzhttp.ContentTypeFilter(compressible),
	)
	if err != nil {
		panic(err) // a negative minBytes or no coding, which the configuration refuses
	}
	return func(next http.Handler) http.Handler {
		compressed := wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				if rec := recover(); rec != nil {
					// An answer cut after its status (http.ErrAbortHandler):
					// gzhttp closes its writer on the way out, which would
					// end the stream cleanly and make a cut export look
					// whole once decompressed. Nothing more reaches the
					// client.
					cutBelow(w)
					panic(rec)
				}
			}()
			next.ServeHTTP(w, r)
		}))
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case asksEventStream(r.Header.Get("Accept")):
				// gzhttp holds a flush that has no bytes yet (an event
				// stream's headers, sent before its first event) until
				// minBytes have come: an event stream goes as it is.
				next.ServeHTTP(w, r)
			case r.Header.Get("Accept-Encoding") == "":
				// Nothing to negotiate (wrk, curl without --compressed):
				// what gzhttp would do, without its writers.
				w.Header().Add("Vary", "Accept-Encoding")
				next.ServeHTTP(w, r)
			default:
				compressed.ServeHTTP(&cutWriter{ResponseWriter: w}, r)
			}
		})
	}
}

// cutBelow cuts the cutWriter under w, gzhttp's writer.
func cutBelow(w http.ResponseWriter) {
	for {
		if c, ok := w.(*cutWriter); ok {
			c.cut = true
			return
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return
		}
		w = u.Unwrap()
	}
}

// asksEventStream reports whether accept names text/event-stream itself
// (as EventSource sends it), not through a wildcard: a client that takes
// anything (*/*, as curl sends) gets JSON, compressed.
func asksEventStream(accept string) bool {
	for _, part := range strings.Split(accept, ",") {
		mt, _, err := mime.ParseMediaType(part)
		if err == nil && mt == mediaEventStream && quality(part, mediaEventStream) > 0 {
			return true
		}
	}
	return false
}

// compressible says which answers are worth compressing: all but those
// gzhttp knows to be compressed already, and event streams.
func compressible(contentType string) bool {
	mt, _, _ := mime.ParseMediaType(contentType)
	return mt != mediaEventStream && gzhttp.DefaultContentTypeFilter(contentType)
}

// cutWriter is the response under gzhttp; once cut, it takes no more bytes.
type cutWriter struct {
	http.ResponseWriter
	cut bool
}

var errCut = errors.New("the answer was cut")

func (c *cutWriter) Write(b []byte) (int, error) {
	if c.cut {
		return 0, errCut
	}
	return c.ResponseWriter.Write(b)
}

func (c *cutWriter) Flush() {
	if !c.cut {
		_ = http.NewResponseController(c.ResponseWriter).Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection (deadlines).
func (c *cutWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// decodeBodies undoes a request body's Content-Encoding: gzip (or its old
// name x-gzip) is decompressed as it is read, so that every limit on a
// body (MAX_BODY_BYTES, IMPORT_MAX_BYTES, applied by the handlers above
// this reader) bounds the decompressed size, and a small body that inflates
// without end (a gzip bomb) is a 413 after the limit, never more memory.
// Any other coding is a 415 (errUnknownCoding).
func decodeBodies(log *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			codings := r.Header.Values("Content-Encoding")
			if len(codings) == 0 || r.Body == nil || r.Body == http.NoBody {
				next.ServeHTTP(w, r)
				return
			}
			switch strings.ToLower(strings.TrimSpace(strings.Join(codings, ","))) {
			case "identity":
			case "gzip", "x-gzip":
				r.Body = &gzipBody{raw: &rawBody{ReadCloser: r.Body}}
				r.ContentLength = -1 // the limits are on what it inflates to
				r.Header.Del("Content-Encoding")
			default:
				respond(log, w, r, errUnknownCoding)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// errUnknownCoding is a request body in a Content-Encoding other than
// gzip: a 415 (RFC 9110 §15.5.16).
var errUnknownCoding = errors.New("unsupported Content-Encoding")

// codingError is a gzip body that is not valid gzip: a 400.
type codingError struct{ err error }

func (e *codingError) Error() string { return "request body: gzip: " + e.err.Error() }

func (e *codingError) Unwrap() error { return e.err }

// gzipBody decompresses a request body, starting at its first read (so
// that reading the gzip header happens under the handler's limits and
// deadlines, not before).
type gzipBody struct {
	raw *rawBody
	zr  *gzip.Reader
	err error // sticky
}

func (g *gzipBody) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	if g.zr == nil {
		g.zr, g.err = gzip.NewReader(g.raw)
		if g.err != nil {
			g.err = g.fault(g.err)
			return 0, g.err
		}
	}
	n, err := g.zr.Read(p)
	if err != nil && err != io.EOF {
		err = g.fault(err)
		g.err = err
	}
	return n, err
}

// fault tells a body that could not be read (the client went away, a read
// deadline), which keeps its own error, from one that is not gzip.
func (g *gzipBody) fault(err error) error {
	if g.raw.err != nil && g.raw.err != io.EOF {
		return g.raw.err
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF // an empty body
	}
	return &codingError{err: err}
}

func (g *gzipBody) Close() error { return g.raw.Close() }

// rawBody is the body as sent, remembering its read error.
type rawBody struct {
	io.ReadCloser
	err error
}

func (b *rawBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.err = err
	}
	return n, err
}
