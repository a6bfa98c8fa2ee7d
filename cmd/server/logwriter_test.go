package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLogWriterFlushesOnInterval(t *testing.T) {
	pr, pw := io.Pipe()
	lw := newLogWriter(pw, 10*time.Millisecond)
	defer lw.Close()
	defer pr.Close() // unblocks a flush still writing
	if _, err := lw.Write([]byte("one\n")); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(pr).ReadString('\n')
		got <- line
	}()
	select {
	case line := <-got:
		if line != "one\n" {
			t.Fatalf("got %q, want %q", line, "one\n")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("line not written out within 10s")
	}
}

func TestLogWriterCloseWritesEverything(t *testing.T) {
	var out bytes.Buffer                // written only under lw's lock or by Close
	lw := newLogWriter(&out, time.Hour) // only Close can write out the tail
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				_, _ = fmt.Fprintf(lw, "g%d line %d\n", g, i)
			}
		})
	}
	wg.Wait()
	lw.Close()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	seen := map[string]bool{}
	for _, l := range lines {
		var g, i int
		if _, err := fmt.Sscanf(l, "g%d line %d", &g, &i); err != nil {
			t.Fatalf("line split or interleaved: %q", l)
		}
		seen[l] = true
	}
	if len(lines) != 8000 || len(seen) != 8000 {
		t.Fatalf("got %d lines (%d distinct) after Close, want 8000", len(lines), len(seen))
	}
}
