package main_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/klauspost/compress/gzip"
	"github.com/ybrest/testsapi/internal/dbtest"
)

// exportRows is the size of the export TestCompressedExportMemory reads:
// the million rows.
const exportRows = 1_000_000

// TestCompressedExportMemory reads a 1,000,000-row NDJSON export from the
// real binary in gzip: its first rows come, decompressed, while the server
// is still sending (its access log has no line for the export yet), every
// row comes, the gzip stream ends cleanly, the server's peak resident set
// stays within 32 MiB of where it was, and the access log counts the bytes
// sent, compressed.
func TestCompressedExportMemory(t *testing.T) {
	url := dbtest.NewSchema(t)
	p := startReady(t, url)
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), `INSERT INTO test (name) SELECT 'row ' || lpad(i::text, 7, '0') FROM generate_series(1, $1) AS i`, exportRows); err != nil {
		t.Fatal(err)
	}
	pid := p.cmd.Process.Pid
	if err := os.WriteFile("/proc/"+strconv.Itoa(pid)+"/clear_refs", []byte("5"), 0); err != nil {
		t.Fatal(err)
	}
	before := procStatus(t, pid, "VmRSS")

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", p.url+"/tests", nil)
	req.Header.Set("Accept", "application/x-ndjson")
	req.Header.Set("Accept-Encoding", "gzip")
	req.Header.Set("X-Request-Id", "gzip-export")
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}} // the bytes as sent
	defer client.CloseIdleConnections()
	start := time.Now()
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("export: %d, Content-Encoding %q", res.StatusCode, res.Header.Get("Content-Encoding"))
	}
	wire := &countingReader{r: res.Body}
	zr, err := gzip.NewReader(wire)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReaderSize(zr, 64<<10)
	rows := 0
	readRow := func() string {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("row %d: %v", rows+1, err)
		}
		rows++
		return line
	}
	for rows < 1000 {
		if line := readRow(); !strings.Contains(line, "row "+lpad7(rows)) {
			t.Fatalf("row %d: %q", rows, line)
		}
	}
	first := time.Since(start)
	if done := exportLogged(p); done != nil {
		t.Fatalf("the first 1000 rows came after the server had finished the export: %v", done)
	}
	t.Logf("the first 1000 rows after %s, %d bytes received, the server still sending", first.Round(time.Millisecond), wire.n)
	for rows < exportRows {
		readRow()
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after %d rows: %v, want the gzip stream's clean end", rows, err)
	}
	elapsed := time.Since(start)
	peak := procStatus(t, pid, "VmHWM")
	t.Logf("%d rows in %s: %d bytes sent gzip (%.1f per row); VmRSS before %d KiB, VmHWM after %d KiB: +%.1f MiB",
		rows, elapsed.Round(time.Millisecond), wire.n, float64(wire.n)/exportRows, before>>10, peak>>10, float64(peak-before)/(1<<20))
	if peak-before > 32<<20 {
		t.Errorf("the resident set grew by %.1f MiB over the export; the most is 32 MiB", float64(peak-before)/(1<<20))
	}
	res.Body.Close()
	var logged logEntry
	dbtest.WaitFor(t, "the export's access log line", 10*time.Second, func() bool {
		logged = exportLogged(p)
		return logged != nil
	})
	if n, _ := logged["bytes"].(float64); int64(n) != wire.n {
		t.Errorf("access log bytes %v, %d sent", logged["bytes"], wire.n)
	}
}

// exportLogged is the access log line of the request TestCompressedExportMemory
// sends, or nil before the server has finished it.
func exportLogged(p *proc) logEntry {
	for _, e := range p.logEntries() {
		if e["msg"] == "request" && e["request_id"] == "gzip-export" {
			return e
		}
	}
	return nil
}

func lpad7(n int) string {
	s := strconv.Itoa(n)
	return strings.Repeat("0", 7-len(s)) + s
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
