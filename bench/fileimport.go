package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// fileImportWorkload is the streaming import (issue 13): one POST /tests
// of a CSV file against psql's \copy of the same file, with the server's
// RSS bounded as for the exports. The file has -export-rows names (the
// issue's 1,000,000 by default).
func (b *bench) fileImportWorkload() workload {
	n := b.opts.exportRows
	return workload{
		key:       "file-import",
		name:      "import a file",
		ours:      fmt.Sprintf("POST /tests, Content-Type: text/csv, a file of %d names (Go client, streamed from disk)", n),
		limit:     `psql: \copy test (name) FROM the same file WITH (FORMAT csv, HEADER)`,
		unit:      "rows/s",
		target:    0.8,
		maxGrowth: 32 << 20,
		rows:      b.opts.rows,
		a:         b.fileImportOurs,
		b:         b.fileImportCopy,
	}
}

// importFile writes the CSV file of a round's side (names apart from every
// other run's, all the same length) before the clock starts.
func (b *bench) importFile(round int, side byte) (string, error) {
	path := filepath.Join(b.dir, "file-import-"+strconv.Itoa(round)+string(side)+".csv")
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	_, _ = w.WriteString("name\r\n")
	for i := range b.opts.exportRows {
		_, _ = w.WriteString("f" + importName(round, side, i) + "\r\n")
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return "", err
	}
	return path, f.Close()
}

// fileImportOurs POSTs the round's file, read from disk as it is sent.
func (b *bench) fileImportOurs(ctx context.Context, round int) (sample, error) {
	path, err := b.importFile(round, 'a')
	if err != nil {
		return sample{}, err
	}
	defer os.Remove(path)
	f, err := os.Open(path)
	if err != nil {
		return sample{}, err
	}
	defer f.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.srv.base+"/tests", f)
	if err != nil {
		return sample{}, err
	}
	req.Header.Set("Content-Type", "text/csv")
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return sample{}, err
	}
	defer resp.Body.Close()
	msg, err := io.ReadAll(resp.Body)
	d := time.Since(start)
	if err != nil {
		return sample{}, err
	}
	if want := fmt.Sprintf("{\"created\":%d}\n", b.opts.exportRows); resp.StatusCode != http.StatusCreated || string(msg) != want {
		return sample{}, fmt.Errorf("POST /tests (CSV): %s: %.300s", resp.Status, msg)
	}
	n := float64(b.opts.exportRows)
	return sample{rate: n / d.Seconds(), elapsed: d, ops: n}, nil
}

// fileImportCopy is psql's \copy of the same kind of file.
func (b *bench) fileImportCopy(ctx context.Context, round int) (sample, error) {
	path, err := b.importFile(round, 'b')
	if err != nil {
		return sample{}, err
	}
	defer os.Remove(path)
	d, err := b.runPsql(ctx, `\copy test (name) FROM '`+path+`' WITH (FORMAT csv, HEADER)`, nil, nil)
	if err != nil {
		return sample{}, err
	}
	n := float64(b.opts.exportRows)
	return sample{rate: n / d.Seconds(), elapsed: d, ops: n}, nil
}
