package portalapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
)

// EventReportConnections is the client's and the gateway's connection path report (outbound).
const EventReportConnections = "report_connections"

// ConnectionPath is how a connection's packets travel.
type ConnectionPath string

// Connection paths: none (no pair nominated yet, or the connection failed), host (a direct path between
// local addresses), srflx (a direct path through a NAT mapping), relay (through a TURN relay).
const (
	PathNone  ConnectionPath = "none"
	PathHost  ConnectionPath = "host"
	PathSrflx ConnectionPath = "srflx"
	PathRelay ConnectionPath = "relay"
)

// ConnectionReport is one connection of a [ReportConnections].
type ConnectionReport struct {
	// PeerID is the other side: a gateway id in a client's report, a client id in a gateway's.
	PeerID string         `json:"peer_id"`
	Path   ConnectionPath `json:"path"`
	// RelayID is the reporter's relay the path goes through (path "relay"), else empty. It may be empty on
	// a relay path too: the path goes through the peer's relay only, which the reporter does not know.
	RelayID string `json:"relay_id"`
	// Local and Remote are the nominated pair's addresses ("ip:port"; empty while the path is "none").
	Local  netip.AddrPort `json:"local"`
	Remote netip.AddrPort `json:"remote"`
	// RTTMillis is the path's latest round-trip time in milliseconds (0: not measured).
	RTTMillis float64 `json:"rtt_ms"`
	RxBytes   uint64  `json:"rx_bytes"`
	TxBytes   uint64  `json:"tx_bytes"`
	// Idle says the connection is in its low-power idle mode.
	Idle bool `json:"idle"`
}

// ReportConnections (client and gateway, outbound "report_connections") is the whole current set of the
// sender's connections; each report replaces the previous one. The mock portal shows the latest in its
// state (admin GET /v1/state) for the dev stack's live page.
type ReportConnections struct {
	Connections []ConnectionReport `json:"connections"`
}

// Event returns "report_connections".
func (ReportConnections) Event() string { return EventReportConnections }

// ErrInvalidReport is wrapped by [ReportConnections.Validate] errors.
var ErrInvalidReport = errors.New("portalapi: invalid connection report")

// Validate checks every connection: a peer id, a known path, a relay id only on relay paths, and a
// finite, non-negative RTT.
func (r ReportConnections) Validate() error {
	for i, c := range r.Connections {
		switch {
		case c.PeerID == "":
			return fmt.Errorf("%w: connection %d: empty peer_id", ErrInvalidReport, i)
		case c.Path != PathNone && c.Path != PathHost && c.Path != PathSrflx && c.Path != PathRelay:
			return fmt.Errorf("%w: connection %d: unknown path %q", ErrInvalidReport, i, c.Path)
		case c.Path != PathRelay && c.RelayID != "":
			return fmt.Errorf("%w: connection %d: relay_id %q on path %q", ErrInvalidReport, i, c.RelayID, c.Path)
		case c.RTTMillis < 0 || math.IsInf(c.RTTMillis, 0) || math.IsNaN(c.RTTMillis):
			return fmt.Errorf("%w: connection %d: rtt_ms %v", ErrInvalidReport, i, c.RTTMillis)
		}
	}
	return nil
}

func decodeReportConnections(payload json.RawMessage) (Message, error) {
	v, err := into[ReportConnections](payload)
	if err != nil {
		return nil, err
	}
	if err := v.(ReportConnections).Validate(); err != nil {
		return nil, err
	}
	return v, nil
}
