package api

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestCompressEventStream: a server-sent event stream (the change feed's
// answer to Accept: text/event-stream) is never compressed or held: its
// headers, flushed before any event, and each event, flushed alone, reach
// the client while the handler is still running.
func TestCompressEventStream(t *testing.T) {
	t.Parallel()
	next := make(chan struct{})
	done := make(chan struct{})
	h := compressAnswers(1024, true, true)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(done)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		_ = rc.Flush()
		for _, ev := range []string{"data: one\n\n", "data: two\n\n"} {
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
			_, _ = w.Write([]byte(ev))
			_ = rc.Flush()
		}
		<-r.Context().Done()
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Accept-Encoding", "gzip, zstd")
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	res, err := client.Do(req) // the headers, before any event
	if err != nil {
		t.Fatalf("the stream's headers: %v", err)
	}
	defer res.Body.Close()
	if ce := res.Header.Get("Content-Encoding"); ce != "" {
		t.Fatalf("event stream answered with Content-Encoding %q", ce)
	}
	br := bufio.NewReader(res.Body)
	for _, want := range []string{"data: one\n", "data: two\n"} {
		next <- struct{}{}
		line, err := br.ReadString('\n')
		if err != nil || line != want {
			t.Fatalf("event %q, %v; want %q", line, err, want)
		}
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-done:
		t.Fatal("the handler ended before the client read its events")
	default:
	}
}

// TestCompressible: event streams are excluded by their Content-Type too,
// whatever the request's Accept said.
func TestCompressible(t *testing.T) {
	t.Parallel()
	for ct, want := range map[string]bool{
		"application/json":                        true,
		"application/x-ndjson; charset=utf-8":     true,
		"text/csv; charset=utf-8; header=present": true,
		"text/event-stream":                       false,
		"text/event-stream; charset=utf-8":        false,
		"application/zip":                         false,
	} {
		if got := compressible(ct); got != want {
			t.Errorf("compressible(%q) = %v, want %v", ct, got, want)
		}
	}
}

func TestAsksEventStream(t *testing.T) {
	t.Parallel()
	for accept, want := range map[string]bool{
		"text/event-stream":                    true,
		"application/json, text/event-stream":  true,
		"text/event-stream;q=0.5":              true,
		"text/event-stream;q=0":                false,
		"*/*":                                  false,
		"text/*":                               false,
		"":                                     false,
		"application/x-ndjson, text/csv;q=0.9": false,
	} {
		if got := asksEventStream(accept); got != want {
			t.Errorf("asksEventStream(%q) = %v, want %v", accept, got, want)
		}
	}
}
