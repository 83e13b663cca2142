// Package monitoring holds no code of its own: its tests keep the Grafana
// dashboard (deploy/grafana/moegrid.json) and the Prometheus alert rules
// (deploy/prometheus/alerts.yaml) true to the metrics moegrid exports, so
// that a renamed metric fails a test instead of silently emptying a panel or
// muting an alert.
package monitoring
