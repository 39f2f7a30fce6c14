package cliconf

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
)

// Common are the settings the client and the gateway share, as flags over environment variables.
type Common struct {
	APIURL       string
	Token        string // resolved by Resolve
	TokenFile    string
	flagToken    string
	ID           string
	IDFile       string
	Name         string
	Userspace    bool
	Port         int
	StatusSocket string
	HealthAddr   string
	MetricsAddr  string
	LogLevel     string
	LogFormat    string
	OTLPEndpoint string
}

// RegisterCommon adds the shared flags to fs, with defaults from env. role is "client" or "gateway";
// defaultStatus is the status socket's default path; defaultPort the node's port.
func RegisterCommon(fs *flag.FlagSet, env *Env, role, defaultStatus string, defaultPort int) *Common {
	c := &Common{}
	fs.StringVar(&c.APIURL, "api-url", env.Str("SNOWGATE_API_URL", ""), "portal base URL, ws(s):// or http(s):// [SNOWGATE_API_URL] (required)")
	fs.StringVar(&c.flagToken, "token", "", "portal token [SNOWGATE_TOKEN] (prefer --token-file: flags show in ps)")
	fs.StringVar(&c.TokenFile, "token-file", env.Str("SNOWGATE_TOKEN_FILE", ""),
		"file holding the portal token, read once at start [SNOWGATE_TOKEN_FILE]; default: $CREDENTIALS_DIRECTORY/"+CredentialName+" if present")
	fs.StringVar(&c.ID, "id", env.Str("SNOWGATE_ID", ""), "device id sent to the portal [SNOWGATE_ID]; default: generated once and kept in --id-file")
	fs.StringVar(&c.IDFile, "id-file", env.Str("SNOWGATE_ID_FILE", DefaultIDFile(role)), "where the generated device id is kept [SNOWGATE_ID_FILE]")
	fs.StringVar(&c.Name, "name", env.Str("SNOWGATE_NAME", Hostname("snowgate-"+role)), "name shown in the portal [SNOWGATE_NAME]")
	fs.BoolVar(&c.Userspace, "userspace", env.Bool("SNOWGATE_USERSPACE", false), "userspace networking, no root and no kernel TUN [SNOWGATE_USERSPACE]")
	fs.IntVar(&c.Port, "port", env.Int("SNOWGATE_PORT", defaultPort), "UDP port of the node's sockets, 0 for a fresh one on every start; a pinned port waits up to 10 min for the relays after a crash [SNOWGATE_PORT]")
	fs.StringVar(&c.StatusSocket, "status-socket", env.Str("SNOWGATE_STATUS_SOCKET", defaultStatus), "status socket (owner only) [SNOWGATE_STATUS_SOCKET]; empty: off")
	fs.StringVar(&c.HealthAddr, "health-check-addr", env.Str("HEALTH_CHECK_ADDR", ""), "address of /healthz, /readyz and /metrics [HEALTH_CHECK_ADDR]; empty: off")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", env.Str("METRICS_ADDR", ""), "address of /metrics (and /healthz, /readyz) if different [METRICS_ADDR]; empty: off")
	fs.StringVar(&c.LogLevel, "log-level", env.Str("LOG_LEVEL", "info"), "log level directives, e.g. info,node=debug [LOG_LEVEL]")
	fs.StringVar(&c.LogFormat, "log-format", env.Str("LOG_FORMAT", "human"), "human or json [LOG_FORMAT]")
	fs.StringVar(&c.OTLPEndpoint, "otlp-endpoint", env.Str("OTEL_EXPORTER_OTLP_ENDPOINT", ""), "OTLP/HTTP endpoint for error telemetry [OTEL_EXPORTER_OTLP_ENDPOINT]")
	return c
}

// Resolve checks the shared settings after parsing and reads the token and the device id; each problem is
// a clear error naming the flag and variable.
func (c *Common) Resolve(getenv func(string) string) error {
	if c.APIURL == "" {
		return errors.New("no portal URL: set --api-url or SNOWGATE_API_URL")
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("--port %d: want 0..65535", c.Port)
	}
	if c.LogFormat != "human" && c.LogFormat != "json" {
		return fmt.Errorf("--log-format %q: want human or json", c.LogFormat)
	}
	tok, err := ResolveToken(c.flagToken, c.TokenFile, getenv)
	if err != nil {
		return err
	}
	c.Token = tok
	id, err := DeviceID(c.ID, c.IDFile)
	if err != nil {
		return err
	}
	c.ID = id
	return nil
}

// DefaultIDFile is where a daemon keeps its generated device id: /var/lib/snowgate/<role>-id for root,
// else the user's config directory.
func DefaultIDFile(role string) string {
	if os.Geteuid() == 0 {
		return filepath.Join("/var/lib/snowgate", role+"-id")
	}
	if dir, err := os.UserConfigDir(); err == nil {
		return filepath.Join(dir, "snowgate", role+"-id")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("snowgate-%s-id-%d", role, os.Geteuid()))
}
