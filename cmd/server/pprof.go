//go:build pprof

package main

import (
	"fmt"
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof/ on http.DefaultServeMux, which the API never serves
	"os"
)

// Only a build with -tags pprof has this file: the benchmark harness's -pprof
// run (bench/), never the release binary or the image. PPROF_ADDR (say
// 127.0.0.1:6060) then serves net/http/pprof on a listener of its own, apart
// from the API's handler.
func init() {
	addr := os.Getenv("PPROF_ADDR")
	if addr == "" {
		return
	}
	go func() {
		if err := http.ListenAndServe(addr, nil); err != nil {
			fmt.Fprintln(os.Stderr, "pprof:", err)
		}
	}()
}
