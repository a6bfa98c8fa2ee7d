package main

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/ybrest/testsapi/internal/api"
	"github.com/ybrest/testsapi/internal/metrics"
	"github.com/ybrest/testsapi/internal/store"
)

// newFeed returns the change feed the configuration asks for, nil for
// FEED=off.
func newFeed(log *slog.Logger, st *store.Store, cfg config) *api.Feed {
	if cfg.Feed == "off" {
		return nil
	}
	return api.NewFeed(log, st, api.FeedConfig{
		MaxFeeds:  cfg.FeedMax,
		Heartbeat: cfg.FeedHeartbeat,
		MaxLag:    cfg.FeedMaxLag,
		Poll:      cfg.FeedPoll,
		// A poll is one short query, as /readyz's ping is; a feed waits
		// for the database as long as any request does.
		PollTimeout: cfg.DBAcquireTimeout,
		Unavailable: cfg.RequestTimeout,
	})
}

// startFeed runs, once the schema is ready, what the feed needs until ctx
// is done: the consumer (which records changes while this instance holds
// the slot), the tail that serves this instance's feeds, the retention
// purge and the slot's metrics. With FEED=off it drops the slot instead,
// so that no slot is left unread holding WAL. The returned function waits
// for all of it to stop.
func startFeed(ctx context.Context, log *slog.Logger, st *store.Store, feed *api.Feed, m *metrics.Metrics, repl *pgconn.Config, cfg config) (wait func()) {
	var wg sync.WaitGroup
	if feed == nil {
		dropCtx, cancel := context.WithTimeout(ctx, cfg.RequestTimeout)
		defer cancel()
		if err := st.DropSlot(dropCtx, cfg.FeedSlot); err != nil {
			log.Warn("change feed off: could not drop its replication slot", "slot", cfg.FeedSlot, "error", err.Error())
		}
		return wg.Wait
	}
	if cfg.Feed == "auto" {
		logical, err := st.LogicalWAL(ctx)
		if err != nil || !logical {
			feed.Disable()
			msg := "change feed off: the database's wal_level is not logical (FEED=auto)"
			if err != nil {
				msg = "change feed off: could not read wal_level (FEED=auto)"
			}
			log.Info(msg)
			return wg.Wait
		}
	}
	log.Info("change feed on", "slot", cfg.FeedSlot, "retention", cfg.FeedRetention.String())
	for _, run := range []func(){
		func() { consume(ctx, log, st, m, repl, cfg) },
		func() { feed.Run(ctx) },
		func() { purgeChanges(ctx, log, st, cfg.FeedRetention) },
		func() { watchSlot(ctx, log, st, m, cfg.FeedSlot) },
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			run()
		}()
	}
	return wg.Wait
}

// consume records the changes while this instance holds the slot, and
// otherwise tries to take it every FEED_RETRY: the instance that holds it
// may stop at any time.
func consume(ctx context.Context, log *slog.Logger, st *store.Store, m *metrics.Metrics, repl *pgconn.Config, cfg config) {
	busy := false
	for {
		err := st.ConsumeChanges(ctx, repl, cfg.FeedSlot, func() {
			m.FeedConsumer(true)
			log.Info("change feed: recording changes (this instance holds the slot)", "slot", cfg.FeedSlot)
		})
		m.FeedConsumer(false)
		if ctx.Err() != nil {
			return
		}
		switch {
		case errors.Is(err, store.ErrSlotBusy):
			if !busy {
				log.Info("change feed: another instance records changes; standing by", "slot", cfg.FeedSlot)
			}
			busy = true
		case errors.Is(err, store.ErrSlotLost):
			log.Error("change feed: the replication slot was lost (max_slot_wal_keep_size on PostgreSQL, cdc_intent_retention_ms on YugabyteDB); making a new one, older cursors get 410", "error", err.Error())
			busy = false
			continue
		default:
			log.Warn("change feed: consumer stopped, retrying", "retry_in", cfg.FeedRetry.String(), "error", err.Error())
			busy = false
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(cfg.FeedRetry):
		}
	}
}

// changePurgeInterval is how often changes older than FEED_RETENTION are
// deleted.
const changePurgeInterval = time.Minute

// purgeChanges deletes the changes older than retention every
// changePurgeInterval until ctx is done.
func purgeChanges(ctx context.Context, log *slog.Logger, st *store.Store, retention time.Duration) {
	purgeEvery(ctx, log, changePurgeInterval, "old changes", func(ctx context.Context) (int64, error) {
		return st.PurgeChanges(ctx, retention)
	})
}

// slotWatchInterval is how often the slot's lag is read for /metrics.
const slotWatchInterval = 15 * time.Second

// watchSlot exports the slot's lag and state every slotWatchInterval.
func watchSlot(ctx context.Context, log *slog.Logger, st *store.Store, m *metrics.Metrics, slot string) {
	for {
		readCtx, cancel := context.WithTimeout(ctx, slotWatchInterval)
		s, err := st.Slot(readCtx, slot)
		cancel()
		if err == nil {
			m.FeedSlot(s.LagBytes, s.Active, s.WALState)
		} else if ctx.Err() == nil {
			log.Debug("read replication slot status", "error", err.Error())
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(slotWatchInterval):
		}
	}
}
