package metrics

import "github.com/prometheus/client_golang/prometheus"

// feedMetrics are the change feed's gauges.
type feedMetrics struct {
	slotLag   prometheus.Gauge
	slotState *prometheus.GaugeVec
	consumer  prometheus.Gauge
}

func newFeedMetrics() feedMetrics {
	return feedMetrics{
		slotLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "feed_slot_lag_bytes",
			Help: "WAL the change feed's replication slot holds back (current WAL position minus the slot's confirmed one), " +
				"as last read by this instance; -1 when unknown (no slot, or a database that does not say).",
		}),
		slotState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "feed_slot_active",
			Help:      "1 when a consumer (any instance) streams the change feed's slot, 0 when none does; by wal_status.",
		}, []string{"wal_status"}),
		consumer: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "feed_consumer",
			Help:      "1 while this instance is the one recording the change feed (it holds the replication slot).",
		}),
	}
}

// FeedSlot records what the database says of the feed's slot: the WAL it
// holds back (-1 when unknown), whether a consumer streams it and its
// wal_status.
func (m *Metrics) FeedSlot(lagBytes int64, active bool, walStatus string) {
	m.feed.slotLag.Set(float64(lagBytes))
	m.feed.slotState.Reset()
	v := 0.0
	if active {
		v = 1
	}
	m.feed.slotState.WithLabelValues(walStatus).Set(v)
}

// FeedConsumer records whether this instance is the feed's consumer.
func (m *Metrics) FeedConsumer(on bool) {
	v := 0.0
	if on {
		v = 1
	}
	m.feed.consumer.Set(v)
}
