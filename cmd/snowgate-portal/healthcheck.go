package main

import (
	"io"

	"github.com/snowgate/snowgate/internal/telemetry"
)

// healthcheck is the `healthcheck` subcommand: GET /readyz on the portal's own health/metrics address
// (METRICS_ADDR or --addr); 0 on 200, 1 otherwise (also when no address is set: the endpoint is off), 2 on
// bad usage.
func healthcheck(args []string, getenv func(string) string, stderr io.Writer) int {
	return telemetry.Healthcheck("snowgate-portal", "METRICS_ADDR", "", args, getenv, stderr)
}
