package tunnel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/snowgate/snowgate/node"
)

// StatusPath is the URL path of the status document on the status socket.
const StatusPath = "/status"

// DefaultStatusSocket returns the default status socket of a daemon ("client" or "gateway"):
// /run/snowgate/<role>.sock for root, else <runtime dir>/snowgate-<role>.sock ($XDG_RUNTIME_DIR, or the
// temporary directory with the user id in the name).
func DefaultStatusSocket(role string) string {
	if os.Geteuid() == 0 {
		return filepath.Join("/run/snowgate", role+".sock")
	}
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "snowgate-"+role+".sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("snowgate-%s-%d.sock", role, os.Geteuid()))
}

// StatusServer serves a daemon's status as JSON over HTTP on a Unix socket that only its owner may use
// (mode 0600; a missing parent directory is created 0700).
type StatusServer struct {
	path string
	ln   net.Listener
	srv  *http.Server
	done chan struct{}
}

// ServeStatus listens on path and serves get's result (JSON-encoded) at StatusPath until Close. A stale
// socket file (nobody listening) is replaced; a live one is an error.
func ServeStatus(path string, get func() (any, error), log *slog.Logger) (*StatusServer, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if _, err := os.Lstat(path); err == nil {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("status socket %s: another process is listening on it", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("status socket %s: %w", path, err)
		}
		_ = os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("status socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+StatusPath, func(w http.ResponseWriter, _ *http.Request) {
		v, err := get()
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			log.Debug("status write failed", "error", err)
		}
	})
	s := &StatusServer{path: path, ln: ln, done: make(chan struct{}),
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("status socket stopped", "error", err)
		}
	}()
	return s, nil
}

// Path returns the socket's path.
func (s *StatusServer) Path() string { return s.path }

// Close stops serving, waits for the server goroutine and removes the socket file.
func (s *StatusServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	_ = os.Remove(s.path)
	return err
}

// FetchStatus reads a daemon's status document from its socket.
func FetchStatus(ctx context.Context, path string) (json.RawMessage, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://snowgate"+StatusPath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("status socket %s: %w (is the daemon running?)", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status: %s: %s", resp.Status, b)
	}
	return b, nil
}

// ConnectionStatus is one connection of the node as the status documents show it.
type ConnectionStatus struct {
	// ID is the peer: a gateway id on a client, a client id on a gateway.
	ID string `json:"id"`
	// State is "connecting" or "established"; Idle says whether it is in low-power idle mode.
	State string `json:"state"`
	Idle  bool   `json:"idle"`
	// Path is "none", "host", "srflx" (direct) or "relay"; RelayID names the relay that carries a relayed
	// path (our allocation's, or the peer's when our end is direct; "" if it is not one of our relays).
	Path    string `json:"path"`
	Direct  bool   `json:"direct"`
	RelayID string `json:"relay_id,omitempty"`
	Local   string `json:"local,omitempty"`
	Remote  string `json:"remote,omitempty"`
	// RTTMillis is the path's current round-trip time.
	RTTMillis     float64    `json:"rtt_ms"`
	RxBytes       uint64     `json:"rx_bytes"`
	TxBytes       uint64     `json:"tx_bytes"`
	LastHandshake *time.Time `json:"last_handshake,omitempty"`
}

// ConnectionStatuses turns the node's statistics into status entries.
func ConnectionStatuses(stats []node.ConnStats) []ConnectionStatus {
	out := make([]ConnectionStatus, 0, len(stats))
	for _, s := range stats {
		c := ConnectionStatus{
			ID: s.ID, State: "connecting", Idle: s.Idle, Path: s.Path.String(),
			Direct:    s.Path == node.PathHost || s.Path == node.PathServerReflexive,
			RTTMillis: float64(s.RTT.Microseconds()) / 1000, RxBytes: s.RxBytes, TxBytes: s.TxBytes,
		}
		if s.Established {
			c.State = "established"
		}
		if s.Path == node.PathRelay {
			c.RelayID = s.PathRelayID // the relay carrying the path, which may be the peer's
		}
		if s.LocalAddr.IsValid() {
			c.Local = s.LocalAddr.String()
		}
		if s.RemoteAddr.IsValid() {
			c.Remote = s.RemoteAddr.String()
		}
		if !s.LastHandshake.IsZero() {
			t := s.LastHandshake
			c.LastHandshake = &t
		}
		out = append(out, c)
	}
	return out
}
