package store

import (
	"context"
	"sync/atomic"
)

// sharedContext is the context of one statement that answers several
// callers (a group-commit batch, a group of page queries): it has values'
// values but ends only once every one of the callers' contexts has ended,
// so that one caller giving up does not cancel the statement for the
// others, and once all have, nobody waits for its answer and it is
// cancelled on the server as a lone caller's would be. n is the number of
// callers and ctxOf(i) the context of the i-th. Call release when the
// statement is done.
func sharedContext(values context.Context, n int, ctxOf func(i int) context.Context) (ctx context.Context, release func()) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(values))
	var waiting atomic.Int64
	waiting.Store(int64(n))
	stops := make([]func() bool, n)
	for i := range n {
		stops[i] = context.AfterFunc(ctxOf(i), func() {
			if waiting.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}
