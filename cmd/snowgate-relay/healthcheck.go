package main

import (
	"io"

	"github.com/snowgate/snowgate/internal/telemetry"
)

// healthcheck is the `healthcheck` subcommand: GET /readyz on the relay's own health address
// (HEALTH_CHECK_ADDR or --addr); 0 on 200, 1 otherwise, 2 on bad usage.
func healthcheck(args []string, getenv func(string) string, stderr io.Writer) int {
	return telemetry.Healthcheck("snowgate-relay", "HEALTH_CHECK_ADDR", defaultHealthAddr, args, getenv, stderr)
}
