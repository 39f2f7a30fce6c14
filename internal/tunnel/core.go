package tunnel

import (
	"time"

	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/node"
)

// Verdict is what a core decides for the packet it was given.
type Verdict uint8

const (
	// Pass lets the packet go on its way, possibly rewritten in place.
	Pass Verdict = iota
	// Stop takes the packet out of the stream: dropped (and counted), answered locally, or copied by the
	// core (buffered until its flow is up, handed to a local stack).
	Stop
)

// String names the verdict.
func (v Verdict) String() string {
	if v == Pass {
		return "pass"
	}
	return "stop"
}

// PortalState says where the portal session is.
type PortalState uint8

const (
	// PortalConnecting: dialling or joining (first time, or after a drop).
	PortalConnecting PortalState = iota
	// PortalJoined: the topic is joined.
	PortalJoined
	// PortalDisconnected: the socket was lost; the session redials with backoff.
	PortalDisconnected
)

// String names the state as status output shows it.
func (s PortalState) String() string {
	switch s {
	case PortalJoined:
		return "joined"
	case PortalDisconnected:
		return "disconnected"
	}
	return "connecting"
}

// Core is the sans-IO state machine of a client or a gateway (see the package doc). It is not safe for
// concurrent use: the [Driver] serialises every call.
type Core interface {
	// HandlePortalState reports a change of the portal session (joined, lost).
	HandlePortalState(s PortalState, now time.Time)
	// HandlePortalMessage handles a decoded message of the daemon's portal channel (portalapi.Unknown for
	// events the decoder does not know).
	HandlePortalMessage(msg portalapi.Message, now time.Time)
	// HandleNodeEvent handles an event of the node.
	HandleNodeEvent(ev node.Event, now time.Time)
	// HandleActionFailed reports that an action the core emitted failed (e.g. NodeUpsert with
	// node.ErrNoRelays).
	HandleActionFailed(a Action, err error, now time.Time)
	// HandleTunInput handles an IP packet read from the TUN device, before wireguard-go encrypts it.
	HandleTunInput(pkt []byte, now time.Time) Verdict
	// HandleNetworkInput handles an IP packet that arrived from the network, decrypted and source-checked
	// by wireguard-go, before it is written to the TUN device.
	HandleNetworkInput(pkt []byte, now time.Time) Verdict
	// HandleTimeout advances the core's timers to now.
	HandleTimeout(now time.Time)
	// PollTimeout returns when HandleTimeout must next be called, if anything is pending. It must be cheap:
	// the driver asks after every batch of packets.
	PollTimeout() (time.Time, bool)
	// PollAction returns the next action to carry out.
	PollAction() (Action, bool)
}
