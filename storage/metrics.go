package storage

import "github.com/prometheus/client_golang/prometheus"

// poolCollector exports pgxpool statistics, read at scrape time, and the
// count of room batches that ran again on stale heads.
type poolCollector struct {
	db                                          *DB
	total, idle, acquired, maxConns, acquireDur *prometheus.Desc
	acquires, emptyAcquires                     *prometheus.Desc
	staleHeads                                  *prometheus.Desc
}

// Collector returns a Prometheus collector of the pool's statistics.
func (db *DB) Collector() prometheus.Collector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("weft_db_pool_"+name, help, nil, nil)
	}
	return &poolCollector{
		db:            db,
		total:         d("connections", "Open connections in the pool."),
		idle:          d("idle_connections", "Idle connections in the pool."),
		acquired:      d("acquired_connections", "Connections currently in use."),
		maxConns:      d("max_connections", "Configured pool size."),
		acquireDur:    d("acquire_wait_seconds_total", "Total time spent waiting for a connection."),
		acquires:      d("acquires_total", "Connections acquired from the pool."),
		emptyAcquires: d("empty_acquires_total", "Acquires that had to wait because the pool was empty."),
		staleHeads: prometheus.NewDesc("weft_room_batch_stale_heads_total",
			"Room write batches that found the cached room heads they built on changed by another process, and ran again.", nil, nil),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.total, c.idle, c.acquired, c.maxConns, c.acquireDur, c.acquires, c.emptyAcquires, c.staleHeads} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.db.pool.Stat()
	ch <- prometheus.MustNewConstMetric(c.total, prometheus.GaugeValue, float64(s.TotalConns()))
	ch <- prometheus.MustNewConstMetric(c.idle, prometheus.GaugeValue, float64(s.IdleConns()))
	ch <- prometheus.MustNewConstMetric(c.acquired, prometheus.GaugeValue, float64(s.AcquiredConns()))
	ch <- prometheus.MustNewConstMetric(c.maxConns, prometheus.GaugeValue, float64(s.MaxConns()))
	ch <- prometheus.MustNewConstMetric(c.acquireDur, prometheus.CounterValue, s.AcquireDuration().Seconds())
	ch <- prometheus.MustNewConstMetric(c.acquires, prometheus.CounterValue, float64(s.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(c.emptyAcquires, prometheus.CounterValue, float64(s.EmptyAcquireCount()))
	ch <- prometheus.MustNewConstMetric(c.staleHeads, prometheus.CounterValue, float64(c.db.staleHeads.Load()))
}
