package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// encode writes v as JSON with the given status and content type.
func encode(w http.ResponseWriter, status int, contentType string, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Only our own types are encoded; this is a programming error.
		panic(err)
	}
	writeBody(w, status, contentType, append(body, '\n'))
}

// writeBody sends a whole body with its Content-Length, so that net/http
// sends it as it is rather than chunked (which it does for a body over
// 2 KiB written without a length).
func writeBody(w http.ResponseWriter, status int, contentType string, body []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// readJSONBody checks that r carries JSON and returns its body, read through
// http.MaxBytesReader so no more than limit bytes are ever held. A body
// over the limit gives *http.MaxBytesError.
func readJSONBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	return readBody(w, r, limit, mediaJSON)
}

// readBody is readJSONBody for a body of one of the media types types, the
// preferred first.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, types ...string) ([]byte, error) {
	if err := checkContentType(r.Header.Get("Content-Type"), types...); err != nil {
		return nil, err
	}
	if r.ContentLength > limit {
		// Refuse before reading a byte of it.
		return nil, &http.MaxBytesError{Limit: limit}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		return nil, readError(err)
	}
	return body, nil
}

// readError is the error of a body that could not be read: too large
// (413, as MaxBytesError; decompressed, for a gzip body), not valid gzip
// (400, as *codingError), or cut off.
func readError(err error) error {
	var tooBig *http.MaxBytesError
	var badGzip *codingError
	if errors.As(err, &tooBig) || errors.As(err, &badGzip) {
		return err
	}
	return badRequest("The request body could not be read.")
}

// checkContentType accepts v when it is one of types, with no parameter but
// charset=utf-8; anything else is a 415 that names the types.
func checkContentType(v string, types ...string) error {
	want := strings.Join(types, " or ")
	unsupported := &requestError{
		status: http.StatusUnsupportedMediaType,
		detail: "Content-Type must be " + want + ".",
	}
	if v == "" {
		return unsupported
	}
	mt, params, err := mime.ParseMediaType(v)
	if err != nil || !slices.Contains(types, mt) {
		return unsupported
	}
	for k, p := range params {
		if k != "charset" || !strings.EqualFold(p, "utf-8") {
			return &requestError{
				status: http.StatusUnsupportedMediaType,
				detail: "Content-Type must be " + want + ", with no parameter but charset=utf-8.",
			}
		}
	}
	return nil
}

// decodeJSON decodes exactly one JSON value from body into v: trailing data
// and, where v's types say so, unknown fields are errors. Every error is a
// 400 whose detail says what is wrong without echoing the body.
func decodeJSON(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest(jsonProblem(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("The request body has data after the JSON value.")
	}
	return nil
}

func jsonProblem(err error) string {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var field *unknownFieldError
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "The request body is empty or ends before the JSON value does."
	case errors.As(err, &syntax):
		return "The request body is not valid JSON (at byte " + strconv.FormatInt(syntax.Offset, 10) + ")."
	case errors.As(err, &typ):
		if typ.Field != "" {
			return "Field " + strconv.Quote(typ.Field) + " has the wrong type: want " + typ.Type.String() + "."
		}
		return "The request body must be an object or an array of objects."
	case errors.As(err, &field):
		return field.Error()
	case errors.As(err, new(*wrongTypeError)):
		return err.Error()
	}
	return "The request body is not valid JSON for this operation."
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
