// Package telemetry is snowgate's observability: the slog handler every daemon logs through, OpenTelemetry
// error telemetry, and metrics with a Prometheus endpoint. Only cmd/ calls Setup; packages take a
// *slog.Logger and a metric.MeterProvider in their Config.
//
// # Logs
//
// The human format puts the message first, then the fields:
//
//	2026-11-27T10:00:00.000Z INFO node: connection established gateway=7f3a path=relay
//
// The JSON format (Options.LogFormat "json") writes one flat object per line with time, level, component,
// msg, source and the fields; groups are flattened into dotted keys in both formats. Levels are TRACE
// (LevelTrace, below DEBUG), DEBUG, INFO, WARN, ERROR. Options.LogLevel takes directives such as
// "info,node=debug,client/dns=trace": the longest directive naming the component or one of its ancestors
// wins (see ParseDirectives); Component gives a package its own logger. Records keep the caller's PC, also
// when they come through the pion adapter or wireguard-go's (package wglog, kept apart so that
// binaries without WireGuard do not link it; LogAt and CallerPC serve such adapters). Log errors with Err, which writes the error and
// its wrap chain.
//
// Secrets: the handler replaces the value of any attribute whose key names a secret (token, password,
// secret, psk, private_key, key, keys, …; see isSecretKey) with "[redacted]", and scrubs "token=…",
// "password: …" and "Bearer …" patterns out of messages and string values. That is a guard, not a licence:
// never pass secrets to a logger.
//
// # Error telemetry
//
// Off unless Options.OTLPEndpoint or OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_LOGS_ENDPOINT) is
// set; then records go to an OTLP/HTTP log exporter, independently of the log level filter:
//
//   - ERROR: an exception event (severity ERROR) with exception.type (the most specific Go type in the
//     error chain), exception.message and exception.chain, taken from the first error attribute (Err);
//   - ERROR whose error is marked as a warning (an error in its chain implements TelemetryWarning, e.g. via
//     AsWarning, or matches one of Options.WarningErrors such as the portal's 401 ErrUnauthorized): a
//     message with severity WARN instead of an exception;
//   - WARN: a message (severity WARN); warnings (this one and the one above) carry error.chain, the chain of
//     their first error attribute, also when it was logged as a plain "error" attribute instead of with Err;
//   - INFO: not exported; the last 50 are kept in a ring and attached to the next exported event as the
//     "breadcrumbs" attribute (then cleared);
//   - the TargetTelemetry component at LevelTrace: sampled at TelemetrySampleRate (1 %) and exported as a
//     message (severity INFO, sample_rate=0.01), to count odd events without filling disks.
//
// Exported events carry component, log.level, code.* (call site) and the record's fields, redacted.
//
// # Metrics
//
// Telemetry.MeterProvider is an otel SDK meter provider whose Prometheus exporter writes into a registry of
// its own (plus the Go and process collectors); Telemetry.MetricsHandler serves it. Serve runs /healthz,
// /readyz and /metrics on an address for every daemon, and StatsLoop logs a periodic INFO stats line.
package telemetry
