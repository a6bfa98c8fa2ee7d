package main_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ybrest/testsapi/internal/dbtest"
)

// These tests talk to the server over raw TCP, as a hostile client would:
// what they send is not something net/http's client would produce.

// dial opens a TCP connection to p with an overall deadline.
func dial(t *testing.T, p *proc, within time.Duration) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(p.url, "http://"))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(within))
	return c
}

// readReply reads one HTTP response from c.
func readReply(t *testing.T, c net.Conn, method string) reply {
	t.Helper()
	res, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read the response: %v", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return reply{status: res.StatusCode, header: res.Header, body: b}
}

// checkNoLeak fails if a response says more about the server than it should.
func checkNoLeak(t *testing.T, what string, r reply) {
	t.Helper()
	if s := r.header.Get("Server"); s != "" {
		t.Errorf("%s: Server header %q", what, s)
	}
	for _, leak := range []string{"SQLSTATE", "SELECT", "INSERT", "pgx", "postgres", "goroutine", "panic", "runtime.", ".go:", "dial tcp", "127.0.0.1"} {
		if strings.Contains(string(r.body), leak) {
			t.Errorf("%s: body leaks %q: %.300s", what, leak, r.body)
		}
	}
}

// TestHugeHeader sends 2 MiB of request headers: the server must answer 431
// (net/http's own answer: the limit is MaxHeaderBytes, 1 MiB) and close,
// without reading on.
func TestHugeHeader(t *testing.T) {
	t.Parallel()
	p := startServer(t, "DATABASE_URL="+dbtest.NewSchema(t))
	c := dial(t, p, 30*time.Second)
	go func() {
		// The server answers and hangs up before all of this is sent:
		// write errors are expected.
		w := bufio.NewWriter(c)
		fmt.Fprintf(w, "GET /tests HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 2<<20))
		_ = w.Flush()
	}()
	r := readReply(t, c, http.MethodGet)
	if r.status != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("2 MiB of headers: %d %s, want 431", r.status, r.body)
	}
	checkNoLeak(t, "431", r)
	if r := p.mustDo(t, http.MethodGet, "/healthz", ""); r.status != http.StatusOK {
		t.Fatalf("GET /healthz after the huge header: %d", r.status)
	}
}

// TestTrickledHeaders is a slowloris client: it sends its headers a byte at
// a time, never finishing. The server must cut it off at
// READ_HEADER_TIMEOUT (left at its default, 5 s), while still serving
// everyone else.
func TestTrickledHeaders(t *testing.T) {
	t.Parallel()
	const (
		tricklers = 8
		every     = 200 * time.Millisecond
		giveUp    = 30 * time.Second // far beyond the default 5 s
	)
	p := startServer(t, "DATABASE_URL="+dbtest.NewSchema(t))
	cuts := make(chan trickled, tricklers)
	for range tricklers {
		c := dial(t, p, giveUp)
		go func() { cuts <- trickle(c, every) }()
	}
	// Meanwhile the server serves other clients.
	time.Sleep(time.Second)
	if r := p.mustDo(t, http.MethodGet, "/healthz", ""); r.status != http.StatusOK {
		t.Errorf("GET /healthz while clients trickle headers: %d", r.status)
	}
	var slowest time.Duration
	for range tricklers {
		c := <-cuts
		c.check(t, giveUp)
		slowest = max(slowest, c.after)
	}
	t.Logf("%d trickling clients cut off, the last after %s", tricklers, slowest.Round(time.Millisecond))
}

// trickled is how a trickling client ended.
type trickled struct {
	after time.Duration // from its first byte
	sent  int           // bytes it got to send
	err   error         // how its read ended: nil (EOF) or a reset when the server cut it
}

// check fails if it was not the server that ended the connection: the
// client's own deadline (giveUp) ran out first.
func (c trickled) check(t *testing.T, giveUp time.Duration) {
	t.Helper()
	var ne net.Error
	if errors.As(c.err, &ne) && ne.Timeout() {
		t.Errorf("a trickling client was still connected after %s (%d bytes sent)", giveUp, c.sent)
	}
}

// trickle sends request headers on c one byte every interval, never
// finishing them, until the server closes the connection (or c's deadline
// passes), and says when and how it ended.
func trickle(c net.Conn, every time.Duration) trickled {
	start := time.Now()
	sent := 0
	closed := make(chan error, 1)
	go func() {
		// The server sends nothing before cutting the connection (or, at
		// most, a 408): the read ends when it does.
		_, err := io.ReadAll(c)
		closed <- err
	}()
	head := "GET /tests HTTP/1.1\r\nHost: x\r\nX-Slow: "
	for i := 0; ; i++ {
		b := []byte{'a'}
		if i < len(head) {
			b = []byte{head[i]}
		}
		if _, err := c.Write(b); err != nil {
			break // the server has closed its end
		}
		sent++
		select {
		case err := <-closed:
			return trickled{time.Since(start), sent, err}
		case <-time.After(every):
		}
	}
	return trickled{time.Since(start), sent, <-closed}
}

// TestHugeBody: a body over MAX_BODY_BYTES is refused with a 413 without
// being stored: at once when Content-Length says so, and after at most the
// limit when it is chunked and endless; a client that sends all of its
// body before reading still gets the 413, and one that never stops sending
// is cut off.
func TestHugeBody(t *testing.T) {
	t.Parallel()
	const limit = 1 << 20
	dbURL := dbtest.NewSchema(t)
	p := startReady(t, dbURL, fmt.Sprintf("MAX_BODY_BYTES=%d", limit))

	t.Run("ContentLength", func(t *testing.T) {
		// 10 GiB announced, nothing of it sent: the answer cannot wait
		// for the body.
		c := dial(t, p, 30*time.Second)
		fmt.Fprintf(c, "POST /tests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", int64(10)<<30)
		r := readReply(t, c, http.MethodPost)
		if r.status != http.StatusRequestEntityTooLarge {
			t.Fatalf("10 GiB Content-Length: %d %s, want 413", r.status, r.body)
		}
		checkNoLeak(t, "413", r)
		if r.header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("413 without X-Content-Type-Options: nosniff")
		}
		// The server waits for the rest of the body a bounded time (2 s),
		// then hangs up.
		answered := time.Now()
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("wait for the server to hang up: %v", err)
		}
		if d := time.Since(answered); d > 2*time.Second+time.Second {
			t.Errorf("the server hung up %s after answering, want at most about 2 s", d)
		}
	})

	t.Run("ContentLengthSentInFull", func(t *testing.T) {
		// As Python's http.client and urllib do: the whole body first,
		// then read the answer. The server must read (and drop) what is
		// left of the body after answering, or closing the socket with
		// unread data resets the connection and the 413 is lost with it.
		const size = 13 << 20
		c := dial(t, p, 30*time.Second)
		w := bufio.NewWriter(c)
		fmt.Fprintf(w, "POST /tests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", size)
		w.WriteString(`[{"name":"` + strings.Repeat("a", size-len(`[{"name":""}]`)) + `"}]`)
		if err := w.Flush(); err != nil {
			t.Fatalf("send 13 MB: %v", err)
		}
		r := readReply(t, c, http.MethodPost)
		if r.status != http.StatusRequestEntityTooLarge {
			t.Fatalf("13 MB body: %d %s, want 413", r.status, r.body)
		}
		if want := fmt.Sprintf(`"detail":"The request body is larger than the limit of %d bytes."`, limit); !strings.Contains(string(r.body), want) {
			t.Errorf("13 MB body: %s, want a problem with %s", r.body, want)
		}
		checkNoLeak(t, "413", r)
	})

	t.Run("ChunkedEndless", func(t *testing.T) {
		c := dial(t, p, 60*time.Second)
		fmt.Fprint(c, "POST /tests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
		var sent atomic.Int64
		hungUp := make(chan time.Time, 1)
		go func() {
			chunk := fmt.Sprintf("%x\r\n%s\r\n", 64<<10, strings.Repeat(" ", 64<<10))
			for sent.Load() < 1<<30 {
				if _, err := io.WriteString(c, chunk); err != nil {
					hungUp <- time.Now() // the server has hung up
					return
				}
				sent.Add(64 << 10)
			}
			close(hungUp)
		}()
		r := readReply(t, c, http.MethodPost)
		answered := time.Now()
		if r.status != http.StatusRequestEntityTooLarge {
			t.Fatalf("endless chunked body: %d %s, want 413", r.status, r.body)
		}
		checkNoLeak(t, "413", r)
		// The server answers, then reads on for a while so that a client
		// still sending can read the answer, and hangs up within its
		// bounds (2 s, 64 MiB): never the 1 GiB the client would send.
		at, ok := <-hungUp
		if !ok {
			t.Fatalf("the server took all of a 1 GiB body limited to %d bytes", limit)
		}
		// The socket buffers of both ends, which the kernel grows on
		// loopback up to tcp_rmem's and tcp_wmem's maximums (32 and 4 MiB
		// on the project's machines): 24 MiB was seen to be 1 MiB short
		// on a quiet one. The bound only has to tell the lingering read's
		// 64 MiB from the 1 GiB an unbounded one would take.
		const slack = 64 << 20
		if n := sent.Load(); n > limit+64<<20+slack {
			t.Errorf("the server took %d MiB of an endless body before hanging up", n>>20)
		}
		if d := at.Sub(answered); d > 2*time.Second+time.Second {
			t.Errorf("the server hung up %s after answering, want at most about 2 s", d)
		}
		t.Logf("413, then a hang-up %s later after the client had sent %d MiB (limit %d KiB)",
			at.Sub(answered).Round(time.Millisecond), sent.Load()>>20, limit>>10)
	})

	if rows := mustRows(t, dbURL); len(rows) != 0 {
		t.Fatalf("stored %v", rows)
	}
}

// TestMalformedRequest: requests net/http refuses before any handler runs
// get its own plain-text 400, and nothing about the server.
func TestMalformedRequest(t *testing.T) {
	t.Parallel()
	p := startServer(t, "DATABASE_URL="+dbtest.NewSchema(t))
	for name, raw := range map[string]string{
		"BadRequestLine": "GET\r\n\r\n",
		"BadHeader":      "GET /tests HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
		"NULInHeader":    "GET /tests HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
		"TwoLengths":     "POST /tests HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
	} {
		t.Run(name, func(t *testing.T) {
			c := dial(t, p, 10*time.Second)
			io.WriteString(c, raw)
			r := readReply(t, c, http.MethodGet)
			if r.status != http.StatusBadRequest {
				t.Fatalf("%q: %d %s, want 400", raw, r.status, r.body)
			}
			checkNoLeak(t, name, r)
		})
	}
}
