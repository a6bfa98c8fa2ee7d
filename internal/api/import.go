package api

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ybrest/testsapi/internal/store"
)

// An import is a POST /tests whose body is a file of rows rather than
// JSON: NDJSON, one {"name": ...} object a line, or CSV (RFC 4180) with a
// header row naming the one column name, as GET /tests exports it less its
// id column. It is read as a stream, one row at a time, straight into the
// database's COPY (see store.Import), so its size is bounded by its own
// limit (Limits.ImportMaxBytes) and not by memory.

// maxImportErrors is how many invalid lines a 422 lists; the detail counts
// the rest.
const maxImportErrors = 100

// maxImportLine is the longest NDJSON line (or unquoted CSV line) taken:
// far more than any valid item needs (255 characters, each at most a
// 12-byte escaped surrogate pair, and some whitespace).
const maxImportLine = 64 << 10

// isImport reports whether contentType is one of an import's media types
// (whatever its parameters, which handleTestsImport checks).
func isImport(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && (mt == mediaNDJSON || mt == mediaCSV)
}

// handleTestsImport handles POST /tests with an NDJSON or CSV body: 201,
// 400, 401, 406, 409, 413, 415, 422, 503. It creates every row in one
// transaction, all or nothing, and answers {"created": n} or, when Accept
// asks for application/x-ndjson, the created rows as NDJSON in the order of
// the file, sent once they are committed. Errors name the line: the 1-based
// line of the body where the item starts (a CSV header is line 1). The
// request is not bounded by the request timeout, which would cap the size
// of a file: reading it is bounded by ReadTimeout between bytes, and the
// database work by the client, who can hang up.
func handleTestsImport(log *slog.Logger, st testStore, lim Limits) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Idempotency-Key") != "" {
			// Keys fingerprint a body they keep; an import's is streamed.
			respond(log, w, r, badRequest("Idempotency-Key is not supported for imports (NDJSON or CSV bodies). "+
				"An import is all or nothing: after a 503, or no answer, look up one of its names with GET /tests?name= before sending it again."))
			return
		}
		csv, err := importMedia(r.Header.Get("Content-Type"))
		if err != nil {
			respond(log, w, r, err)
			return
		}
		answer := negotiate(r.Header.Get("Accept"), mediaJSON, mediaNDJSON)
		if answer == "" {
			respond(log, w, r, &requestError{
				status: http.StatusNotAcceptable,
				detail: "An import answers application/json (a summary) or application/x-ndjson (the created rows).",
			})
			return
		}
		if r.ContentLength > lim.ImportMaxBytes {
			respond(log, w, r, &http.MaxBytesError{Limit: lim.ImportMaxBytes})
			return
		}
		rc := http.NewResponseController(w)
		body := io.Reader(http.MaxBytesReader(w, r.Body, lim.ImportMaxBytes))
		if lim.ReadTimeout > 0 {
			body = &idleReader{r: body, rc: rc, timeout: lim.ReadTimeout}
		}
		src := newImportReader(body, csv)

		var created func(store.Test) error
		var out *bufio.Writer
		answered := false // the NDJSON answer has begun
		if answer == mediaNDJSON {
			out = bufio.NewWriterSize(w, streamFlushBytes)
			created = func(t store.Test) error {
				if !answered {
					answered = true
					setWriteDeadline(rc, lim)
					w.Header().Set("Content-Type", mediaNDJSON+"; charset=utf-8")
					w.WriteHeader(http.StatusCreated)
				}
				if _, err := out.Write(appendRow(out.AvailableBuffer(), t)); err != nil {
					return err
				}
				if out.Buffered() >= streamFlushBytes/2 {
					setWriteDeadline(rc, lim)
					return out.Flush()
				}
				return nil
			}
		}
		n, err := st.Import(r.Context(), src, created)
		if err == nil && out != nil {
			setWriteDeadline(rc, lim)
			err = out.Flush()
		}
		switch {
		case err != nil && answered:
			// The rows are stored, but the client cannot be told which
			// any more: cut the answer so that it does not look whole.
			if r.Context().Err() == nil {
				logError(log, r, http.StatusCreated, err)
			}
			panic(http.ErrAbortHandler)
		case err != nil:
			respond(log, w, r, err)
		case out == nil:
			setWriteDeadline(rc, lim)
			encode(w, http.StatusCreated, mediaJSON, struct {
				Created int64 `json:"created"`
			}{n})
		}
	})
}

// setWriteDeadline gives the answer of an import WriteTimeout from now: the
// server's own deadline ran from the start of a request that may have taken
// longer than that to read.
func setWriteDeadline(rc *http.ResponseController, lim Limits) {
	if lim.WriteTimeout > 0 {
		_ = rc.SetWriteDeadline(time.Now().Add(lim.WriteTimeout))
	}
}

// importMedia checks an import's Content-Type and reports whether it is
// CSV. Besides charset=utf-8, CSV may say header=present (as the export
// does); the header row is required either way.
func importMedia(v string) (csv bool, err error) {
	mt, params, _ := mime.ParseMediaType(v)
	for k, p := range params {
		ok := k == "charset" && strings.EqualFold(p, "utf-8") ||
			mt == mediaCSV && k == "header" && strings.EqualFold(p, "present")
		if !ok {
			return false, &requestError{
				status: http.StatusUnsupportedMediaType,
				detail: "An import's Content-Type takes no parameter but charset=utf-8 (and, for text/csv, header=present).",
			}
		}
	}
	return mt == mediaCSV, nil
}

// idleReader gives each read of a request body timeout to complete, so
// that a long upload may go on as long as bytes keep coming (the server's
// ReadTimeout bounds the whole request otherwise).
type idleReader struct {
	r       io.Reader
	rc      *http.ResponseController
	timeout time.Duration
}

func (i *idleReader) Read(p []byte) (int, error) {
	_ = i.rc.SetReadDeadline(time.Now().Add(i.timeout))
	return i.r.Read(p)
}

// importReader reads the rows of an import body, one at a time, as a
// store.ImportSource. A malformed line stops it with a 400; invalid names
// are collected (up to maxImportErrors) and reading goes on, so that the
// 422 at the end lists them.
type importReader struct {
	br      *bufio.Reader
	csv     bool
	started bool  // the CSV header is read
	next    int64 // line number of the next byte to read
	line    int64 // the current row's line
	name    string
	rows    int64
	invalid []fieldError
	nBad    int
	err     error
}

func newImportReader(body io.Reader, csv bool) *importReader {
	return &importReader{br: bufio.NewReaderSize(body, maxImportLine), csv: csv, next: 1}
}

func (ir *importReader) Row() (int64, string) { return ir.line, ir.name }

func (ir *importReader) Err() error { return ir.err }

func (ir *importReader) Next() bool {
	if ir.err != nil {
		return false
	}
	for {
		line, name, errs, err := ir.read()
		if errors.Is(err, io.EOF) {
			ir.err = ir.finish()
			return false
		}
		if err != nil {
			ir.err = err
			return false
		}
		if len(errs) > 0 {
			ir.nBad++
			for _, e := range errs {
				if len(ir.invalid) < maxImportErrors {
					e.Line = line
					ir.invalid = append(ir.invalid, e)
				}
			}
			continue
		}
		ir.line, ir.name = line, name
		ir.rows++
		return true
	}
}

// finish is the error of a body read to its end: invalid lines, or none.
func (ir *importReader) finish() error {
	switch {
	case ir.nBad > 0:
		detail := "The import has " + strconv.Itoa(ir.nBad) + " invalid line(s); nothing was stored. See errors"
		if rest := ir.nBad - len(ir.invalid); rest > 0 && len(ir.invalid) == maxImportErrors {
			detail += " for the first " + strconv.Itoa(maxImportErrors) + " problems"
		}
		return &requestError{status: http.StatusUnprocessableEntity, detail: detail + ".", errors: ir.invalid}
	case ir.csv && !ir.started:
		return badRequest(`A CSV import starts with the header row "name".`)
	case ir.rows == 0:
		return &requestError{status: http.StatusUnprocessableEntity, detail: "The import has no rows."}
	}
	return nil
}

// read returns the next item's line and name, or what is wrong with the
// name, skipping blank lines; io.EOF at the end of the body.
func (ir *importReader) read() (int64, string, []fieldError, error) {
	if !ir.csv {
		return ir.readNDJSON()
	}
	if !ir.started {
		if b, err := ir.br.Peek(3); err == nil && string(b) == "\uFEFF" {
			_, _ = ir.br.Discard(3) // a byte order mark, as spreadsheets write
		}
		line, header, err := ir.readCSV()
		if errors.Is(err, io.EOF) || err != nil && !errors.As(err, new(*requestError)) {
			return 0, "", nil, err
		}
		if err != nil || header != "name" {
			return 0, "", nil, atLine(line, badRequest(`The CSV header must be the one column "name" (an export less its id column).`))
		}
		ir.started = true
	}
	n, name, err := ir.readCSV()
	if err != nil {
		return n, "", nil, err
	}
	item := newTest{Name: name, present: true, badUTF8: !utf8.ValidString(name)}
	return n, name, item.problems("#"), nil
}

// readLine returns the next line without its line break ("\n" or "\r\n")
// and its number; a line longer than maxImportLine is a 400.
func (ir *importReader) readLine() (int64, []byte, error) {
	n := ir.next
	b, err := ir.br.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return n, nil, atLine(n, badRequest("The line is longer than "+strconv.Itoa(maxImportLine)+" bytes."))
	case errors.Is(err, io.EOF) && len(b) == 0:
		return n, nil, io.EOF
	case err != nil && !errors.Is(err, io.EOF):
		return n, nil, readError(err)
	}
	ir.next++
	b = bytes.TrimSuffix(b, []byte{'\n'})
	return n, bytes.TrimSuffix(b, []byte{'\r'}), nil
}

// readNDJSON reads one line of NDJSON: one item as POST takes it, under
// the same rules (parseCreate).
func (ir *importReader) readNDJSON() (int64, string, []fieldError, error) {
	for {
		n, b, err := ir.readLine()
		if err != nil {
			return n, "", nil, err
		}
		switch first(b) {
		case 0:
			continue // a blank line
		case '[':
			return n, "", nil, atLine(n, badRequest(`Each line is one object like {"name": "Bob"}.`))
		}
		names, _, err := parseCreate(b, 1)
		var reqErr *requestError
		if errors.As(err, &reqErr) && reqErr.status == http.StatusUnprocessableEntity {
			// Invalid, not malformed: reading goes on.
			return n, "", reqErr.errors, nil
		}
		if err != nil {
			return n, "", nil, atLine(n, err)
		}
		return n, names[0], nil, nil
	}
}

// readCSV reads one record of the one column: a field, quoted or not, and
// its line break. More than one field, a quote in an unquoted field or
// text after a closing quote are malformed (400).
func (ir *importReader) readCSV() (int64, string, error) {
	for {
		c, err := ir.br.ReadByte()
		if errors.Is(err, io.EOF) {
			return ir.next, "", io.EOF
		}
		if err != nil {
			return ir.next, "", readError(err)
		}
		if c == '"' {
			return ir.readQuoted()
		}
		_ = ir.br.UnreadByte()
		n, b, err := ir.readLine()
		if err != nil {
			return n, "", err
		}
		if len(b) == 0 {
			continue // a blank line
		}
		switch {
		case bytes.IndexByte(b, ',') >= 0:
			return n, "", atLine(n, badRequest("The line has more than one field; a CSV import has the one column name."))
		case bytes.IndexByte(b, '"') >= 0 || bytes.IndexByte(b, '\r') >= 0:
			return n, "", atLine(n, badRequest(`A field with a quote or a line break must be quoted, with quotes doubled (RFC 4180).`))
		}
		return n, string(b), nil
	}
}

// readQuoted reads a quoted field after its opening quote, keeping every
// byte between the quotes as it is (line breaks included) but for doubled
// quotes, then the record's end.
func (ir *importReader) readQuoted() (int64, string, error) {
	n := ir.next
	var field []byte
	for {
		b, err := ir.br.ReadSlice('"')
		field = append(field, b...)
		ir.next += int64(bytes.Count(b, []byte{'\n'}))
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			if len(field) > maxImportLine {
				return n, "", atLine(n, badRequest("The field is longer than "+strconv.Itoa(maxImportLine)+" bytes."))
			}
			continue
		case errors.Is(err, io.EOF):
			return n, "", atLine(n, badRequest("The quoted field is not closed."))
		case err != nil:
			return n, "", readError(err)
		}
		c, err := ir.br.ReadByte()
		if err == nil && c == '"' {
			continue // a doubled quote: one quote of the field
		}
		field = field[:len(field)-1] // the closing quote
		switch {
		case errors.Is(err, io.EOF):
			return n, string(field), nil
		case err != nil:
			return n, "", readError(err)
		case c == '\n':
		case c == '\r':
			if c, err := ir.br.ReadByte(); err != nil || c != '\n' {
				return n, "", atLine(n, badRequest("A closing quote must end the record (with CRLF or LF)."))
			}
		case c == ',':
			return n, "", atLine(n, badRequest("The line has more than one field; a CSV import has the one column name."))
		default:
			return n, "", atLine(n, badRequest("A closing quote must end the record (with CRLF or LF)."))
		}
		ir.next++
		return n, string(field), nil
	}
}

// atLine prefixes the detail of a request error with its line.
func atLine(n int64, err error) error {
	var reqErr *requestError
	if !errors.As(err, &reqErr) {
		return err
	}
	e := *reqErr
	e.detail = "Line " + strconv.FormatInt(n, 10) + ": " + e.detail
	for i := range e.errors {
		e.errors[i].Line = n
	}
	return &e
}
