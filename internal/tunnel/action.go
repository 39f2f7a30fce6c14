package tunnel

import (
	"net/netip"

	"github.com/snowgate/snowgate/node"
)

// Action is something a core asks its driver to do. The driver carries actions out in the order the core
// emitted them, outside the core's lock. The actions of this package are common to both daemons; a core
// may define its own (the client's DNS forwards, the gateway's name resolution), which its driver's
// [DriverConfig.Exec] carries out.
type Action interface {
	// Kind names the action in logs and metrics ("portal_push", "node_upsert", …).
	Kind() string
}

// PortalPush sends an event on the daemon's portal channel (client or gateway topic).
type PortalPush struct {
	Event   string
	Payload any
}

// Kind returns "portal_push".
func (PortalPush) Kind() string { return "portal_push" }

// PortalReconnect drops the portal connection and dials again at once. The seed's relay-loss recovery:
// the portal's next init carries fresh relays.
type PortalReconnect struct {
	// Reason is logged.
	Reason string
}

// Kind returns "portal_reconnect".
func (PortalReconnect) Kind() string { return "portal_reconnect" }

// NodeUpsert creates or keeps a connection (node.UpsertConnection), then sets its AllowedIPs, then carries
// out Then (e.g. the portal answer of the flow the connection is for). A failure (node.ErrNoRelays above
// all) is reported back with [Core.HandleActionFailed], and Then is skipped: an answer is never sent for a
// connection that could not be created.
type NodeUpsert struct {
	Params     node.ConnectionParams
	AllowedIPs []netip.Prefix
	Then       []Action
}

// Kind returns "node_upsert".
func (NodeUpsert) Kind() string { return "node_upsert" }

// NodeRemove drops a connection and its WireGuard peer.
type NodeRemove struct {
	ID string
}

// Kind returns "node_remove".
func (NodeRemove) Kind() string { return "node_remove" }

// NodeAllowedIPs replaces the prefixes routed to (and accepted from) a connection.
type NodeAllowedIPs struct {
	ID       string
	Prefixes []netip.Prefix
}

// Kind returns "node_allowed_ips".
func (NodeAllowedIPs) Kind() string { return "node_allowed_ips" }

// NodeAddCandidate gives a connection a candidate the peer signalled.
type NodeAddCandidate struct {
	ID        string
	Candidate string
}

// Kind returns "node_add_candidate".
func (NodeAddCandidate) Kind() string { return "node_add_candidate" }

// NodeRemoveCandidate drops a candidate the peer invalidated.
type NodeRemoveCandidate struct {
	ID        string
	Candidate string
}

// Kind returns "node_remove_candidate".
func (NodeRemoveCandidate) Kind() string { return "node_remove_candidate" }

// NodeRelays updates the node's relays: Remove by id, then Add (upserted by id).
type NodeRelays struct {
	Remove []string
	Add    []node.Relay
}

// Kind returns "node_relays".
func (NodeRelays) Kind() string { return "node_relays" }

// NodeReset is roaming: the node drops every connection and allocation and rotates its key; the driver
// then reconnects the portal with the new public key (the portal's next init brings the relays back).
type NodeReset struct{}

// Kind returns "node_reset".
func (NodeReset) Kind() string { return "node_reset" }

// SendToTunnel hands IP packets to wireguard-go as if the TUN device had produced them: each is encrypted
// and sent to the peer whose AllowedIPs hold its destination (buffered packets of a flow that is up now,
// control-protocol packets, ICMP errors for the client).
type SendToTunnel struct {
	Packets [][]byte
}

// Kind returns "send_to_tunnel".
func (SendToTunnel) Kind() string { return "send_to_tunnel" }

// WriteToTUN writes IP packets to the OS TUN device (local answers: DNS replies, ICMP errors, packets
// released towards the host).
type WriteToTUN struct {
	Packets [][]byte
}

// Kind returns "write_to_tun".
func (WriteToTUN) Kind() string { return "write_to_tun" }

// SetInterface gives the TUN device the tunnel addresses the portal assigned (init, config_changed). The
// TUN exists before the first init (the node needs it to start), so its addresses come later.
type SetInterface struct {
	IPv4, IPv6 netip.Addr
}

// Kind returns "set_interface".
func (SetInterface) Kind() string { return "set_interface" }

// Fatal stops the daemon with Err (e.g. the portal refused the token).
type Fatal struct {
	Err error
}

// Kind returns "fatal".
func (Fatal) Kind() string { return "fatal" }
