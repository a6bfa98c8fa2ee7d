package main

import (
	"bufio"
	"io"
	"sync"
	"time"
)

// logWriter buffers the log's output and writes it out every interval and
// on Close, instead of one write system call per line: with an access log
// line per request, that call was a measurable share of a page's CPU
// (BENCHMARKS.md). slog writes each record with one Write, so lines are
// never interleaved or split. Every line is out within interval of being
// logged and at a clean exit (run closes the writer last); a crash (a kill
// or an unrecovered panic) can lose the lines of the last interval, at
// most the buffer's 64 KiB.
type logWriter struct {
	mu   sync.Mutex
	bw   *bufio.Writer
	stop chan struct{}
	done chan struct{}
}

func newLogWriter(w io.Writer, interval time.Duration) *logWriter {
	lw := &logWriter{
		bw:   bufio.NewWriterSize(w, 64<<10),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go lw.flushEvery(interval)
	return lw
}

func (lw *logWriter) Write(p []byte) (int, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lw.bw.Write(p)
}

func (lw *logWriter) flush() {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	_ = lw.bw.Flush() // nowhere to report a failing log
}

func (lw *logWriter) flushEvery(interval time.Duration) {
	defer close(lw.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			lw.flush()
		case <-lw.stop:
			return
		}
	}
}

// Close stops the periodic flush and writes out what is buffered. Lines
// logged after Close are still buffered but no longer written out.
func (lw *logWriter) Close() {
	close(lw.stop)
	<-lw.done
	lw.flush()
}
