// Command otlpsink is an OTLP/HTTP trace receiver that keeps nothing: the
// collector a benchmark of the server with tracing on exports to. It
// answers POST /v1/traces, counts the spans, and prints the count every
// -every and when it stops (SIGINT or SIGTERM).
//
//	go run ./bench/otlpsink -addr 127.0.0.1:4318
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:4318", "address to listen on")
	every := flag.Duration("every", 10*time.Second, "how often to print the span count")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *addr, *every); err != nil {
		fmt.Fprintln(os.Stderr, "otlpsink:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, addr string, every time.Duration) error {
	var spans, exports atomic.Int64
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		var req coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(body, &req)
		}
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" || err != nil {
			http.Error(w, "want POST /v1/traces, OTLP protobuf", http.StatusBadRequest)
			return
		}
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				spans.Add(int64(len(ss.Spans)))
			}
		}
		exports.Add(1)
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	})}
	go func() { _ = srv.Serve(ln) }()
	fmt.Printf("otlpsink: listening on %s\n", ln.Addr())
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			fmt.Printf("otlpsink: %d spans in %d exports\n", spans.Load(), exports.Load())
		case <-ctx.Done():
			fmt.Printf("otlpsink: %d spans in %d exports\n", spans.Load(), exports.Load())
			return srv.Close()
		}
	}
}
