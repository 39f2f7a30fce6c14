package core

import "github.com/snowgate/snowgate/internal/p2pcontrol"

// ResolveName is the gateway's own action: resolve Domain with the host's resolver (A and AAAA), then
// call [Gateway.HandleResolved] with ClientID, Assignment, the addresses and the error (through
// tunnel.Driver.Do, from whatever goroutine resolved it). The core emits it for an AssignedIPs the client
// is authorised for, and for the domain of an old-protocol request_connection or allow_access. A result
// that arrives after the assignment was superseded, revoked or its client removed is ignored, so the
// driver need not cancel resolutions. If the driver cannot run it at all it reports the failure with
// tunnel.Driver.Failed, which the core treats as a failed resolution.
type ResolveName struct {
	// ClientID is the client whose NAT the name is for.
	ClientID string
	// Domain is the name to resolve (lower case, no trailing dot).
	Domain string
	// Assignment is what to hand back to HandleResolved unchanged.
	Assignment p2pcontrol.AssignedIPs
}

// Kind returns "resolve_name".
func (ResolveName) Kind() string { return "resolve_name" }
