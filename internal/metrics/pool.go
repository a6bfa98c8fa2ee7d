package metrics

import (
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// CollectPool adds the statistics of the database pool, read from stat (for
// example pool.Stat) at every scrape, so they are never stale and cost
// nothing between scrapes.
func (m *Metrics) CollectPool(stat func() *pgxpool.Stat) {
	m.reg.MustRegister(newPoolCollector(stat))
}

// poolCollector is a prometheus.Collector over pgxpool.Stat.
type poolCollector struct {
	stat    func() *pgxpool.Stat
	metrics []poolMetric
}

// poolMetric is one value of pgxpool.Stat as a Prometheus metric.
type poolMetric struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(*pgxpool.Stat) float64
}

func newPoolCollector(stat func() *pgxpool.Stat) *poolCollector {
	metric := func(name, help string, kind prometheus.ValueType, value func(*pgxpool.Stat) float64) poolMetric {
		return poolMetric{
			desc:  prometheus.NewDesc(prometheus.BuildFQName(namespace, "db_pool", name), help, nil, nil),
			kind:  kind,
			value: value,
		}
	}
	gauge, counter := prometheus.GaugeValue, prometheus.CounterValue
	return &poolCollector{stat: stat, metrics: []poolMetric{
		metric("total_conns", "Connections in the pool: idle, acquired and being opened.", gauge,
			func(s *pgxpool.Stat) float64 { return float64(s.TotalConns()) }),
		metric("idle_conns", "Open connections waiting to be used.", gauge,
			func(s *pgxpool.Stat) float64 { return float64(s.IdleConns()) }),
		metric("acquired_conns", "Connections in use by a request now.", gauge,
			func(s *pgxpool.Stat) float64 { return float64(s.AcquiredConns()) }),
		metric("constructing_conns", "Connections being opened now.", gauge,
			func(s *pgxpool.Stat) float64 { return float64(s.ConstructingConns()) }),
		metric("max_conns", "Most connections the pool may hold (DB_MAX_CONNS).", gauge,
			func(s *pgxpool.Stat) float64 { return float64(s.MaxConns()) }),
		metric("acquires_total", "Connections handed out by the pool.", counter,
			func(s *pgxpool.Stat) float64 { return float64(s.AcquireCount()) }),
		metric("acquire_wait_seconds_total", "Time spent acquiring connections, summed over every successful acquire.", counter,
			func(s *pgxpool.Stat) float64 { return s.AcquireDuration().Seconds() }),
		metric("empty_acquires_total", "Acquires that found no idle connection and had to wait for one.", counter,
			func(s *pgxpool.Stat) float64 { return float64(s.EmptyAcquireCount()) }),
		metric("empty_acquire_wait_seconds_total", "Time spent waiting by acquires that found no idle connection.", counter,
			func(s *pgxpool.Stat) float64 { return s.EmptyAcquireWaitTime().Seconds() }),
		metric("canceled_acquires_total", "Acquires given up because their request's context ended.", counter,
			func(s *pgxpool.Stat) float64 { return float64(s.CanceledAcquireCount()) }),
		metric("new_conns_total", "Connections opened.", counter,
			func(s *pgxpool.Stat) float64 { return float64(s.NewConnsCount()) }),
		metric("max_lifetime_destroys_total", "Connections closed for reaching DB_MAX_CONN_LIFETIME.", counter,
			func(s *pgxpool.Stat) float64 { return float64(s.MaxLifetimeDestroyCount()) }),
		metric("max_idle_destroys_total", "Connections closed for staying idle too long.", counter,
			func(s *pgxpool.Stat) float64 { return float64(s.MaxIdleDestroyCount()) }),
	}}
}

// Describe implements prometheus.Collector.
func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.metrics {
		ch <- m.desc
	}
}

// Collect implements prometheus.Collector: one pool.Stat per scrape.
func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stat()
	for _, m := range c.metrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.kind, m.value(s))
	}
}
