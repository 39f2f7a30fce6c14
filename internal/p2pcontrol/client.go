package p2pcontrol

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/snowgate/snowgate/internal/fifo"
)

// Defaults of ClientConfig.
const (
	// DefaultInitialRetransmit is the wait after the first AssignedIPs before it is sent again.
	DefaultInitialRetransmit = time.Second
	// DefaultMaxRetransmit caps the doubling wait between two sends.
	DefaultMaxRetransmit = 16 * time.Second
	// DefaultMaxSends is how many times one assignment is sent before the client gives up on it.
	DefaultMaxSends = 6
)

// Errors of the state machines.
var (
	// ErrUnexpectedEvent means a peer sent an event its role never receives (e.g. DomainStatus to a gateway).
	ErrUnexpectedEvent = errors.New("unexpected p2p control event for this role")
	// ErrWrongDestination means a control packet is not addressed to our tunnel address.
	ErrWrongDestination = errors.New("p2p control packet not addressed to us")
	// ErrInvalidConfig means a Config field is out of range.
	ErrInvalidConfig = errors.New("invalid p2p control config")
)

// AssignmentID identifies one assignment made by Client.Assign. It is sent as the "seq" field and echoed by
// the gateway. IDs start at 1 and grow by one per new assignment.
type AssignmentID uint64

// Transmit is a control packet to send into the tunnel, towards Peer (the packet's destination address).
type Transmit struct {
	// Peer is the receiver's tunnel IPv6 address.
	Peer netip.Addr
	// Packet is the complete IPv6 control packet.
	Packet []byte
}

// ClientEventKind says what a ClientEvent reports.
type ClientEventKind uint8

// Client event kinds. Every assignment ends with exactly one of the first five.
const (
	// EventConfirmed: the gateway reported the NAT for this assignment active.
	EventConfirmed ClientEventKind = iota + 1
	// EventRejected: the gateway reported the NAT for this assignment inactive (e.g. not authorised, or the
	// domain did not resolve).
	EventRejected
	// EventGaveUp: no DomainStatus arrived after MaxSends sends.
	EventGaveUp
	// EventSuperseded: a different assignment for the same peer and domain replaced this one while pending.
	EventSuperseded
	// EventAborted: the peer said Goodbye or was removed, or the domain forgotten, while this assignment
	// was pending.
	EventAborted
	// EventPeerGoodbye: the peer sent Goodbye; all its state is gone. Only Peer is set.
	EventPeerGoodbye
)

// String returns the event kind's name.
func (k ClientEventKind) String() string {
	switch k {
	case EventConfirmed:
		return "confirmed"
	case EventRejected:
		return "rejected"
	case EventGaveUp:
		return "gave-up"
	case EventSuperseded:
		return "superseded"
	case EventAborted:
		return "aborted"
	case EventPeerGoodbye:
		return "peer-goodbye"
	default:
		return fmt.Sprintf("ClientEventKind(%d)", uint8(k))
	}
}

// ClientEvent is an output of Client: the end of an assignment, or a peer's Goodbye.
type ClientEvent struct {
	// Kind says what happened.
	Kind ClientEventKind
	// Peer is the gateway's tunnel IPv6 address.
	Peer netip.Addr
	// ID is the assignment (zero for EventPeerGoodbye).
	ID AssignmentID
	// Resource, Domain and ProxyIPs are the assignment's (empty for EventPeerGoodbye).
	Resource, Domain string
	// ProxyIPs are the assignment's proxy IPs.
	ProxyIPs []netip.Addr
}

// AssignmentState is the state of a (peer, domain) on the client.
type AssignmentState uint8

// Assignment states.
const (
	// StateNone: no assignment is known for the peer and domain.
	StateNone AssignmentState = iota
	// StatePending: AssignedIPs is being (re)sent, no DomainStatus yet.
	StatePending
	// StateConfirmed: the gateway reported the NAT active.
	StateConfirmed
	// StateFailed: the gateway reported the NAT inactive, or the client gave up.
	StateFailed
)

// String returns the state's name.
func (s AssignmentState) String() string {
	switch s {
	case StateNone:
		return "none"
	case StatePending:
		return "pending"
	case StateConfirmed:
		return "confirmed"
	case StateFailed:
		return "failed"
	default:
		return fmt.Sprintf("AssignmentState(%d)", uint8(s))
	}
}

// ClientStats are counters of a Client since it was made, for the driver to export as metrics.
type ClientStats struct {
	// Sends counts AssignedIPs packets queued, first sends and retransmits.
	Sends uint64
	// Retransmits counts the sends after the first of an assignment.
	Retransmits uint64
	// StaleStatuses counts DomainStatus events dropped because they answer an older assignment (or none).
	StaleStatuses uint64
	// GaveUp counts assignments given up after MaxSends.
	GaveUp uint64
}

// ClientConfig configures a Client.
type ClientConfig struct {
	// Local is the client's tunnel IPv6 address, the source of its control packets. Required.
	Local netip.Addr
	// InitialRetransmit is the wait after the first send; it doubles after each send. 0 → 1 s.
	InitialRetransmit time.Duration
	// MaxRetransmit caps the wait between sends. 0 → 16 s.
	MaxRetransmit time.Duration
	// MaxSends is how many times an assignment is sent before EventGaveUp. 0 → 6.
	MaxSends int
	// Logger receives debug logs; nil discards them.
	Logger *slog.Logger
}

// Client is the client's side of the DNS-resource NAT setup, sans-IO: it tells each gateway which proxy IPs it
// assigned to a domain (AssignedIPs), retransmits with exponential backoff until the gateway's DomainStatus
// for that assignment arrives, and gives up after MaxSends. State is kept per (gateway, domain): a new
// assignment for the same domain supersedes the old one, and the same assignment asked again is a no-op.
//
// Reordering: each assignment has an AssignmentID sent as "seq" and echoed by the gateway, so a late
// DomainStatus for an older assignment never confirms a newer one. A status without seq (a Firezone
// gateway) is accepted for the current assignment if its resource matches, as Firezone does.
//
// Drive it with Assign, HandlePacket and HandleTimeout (at PollTimeout), then drain PollTransmit and
// PollEvent. It is not safe for concurrent use.
type Client struct {
	cfg       ClientConfig
	log       *slog.Logger
	lastID    AssignmentID
	entries   map[clientKey]*assignment
	transmits fifo.Queue[Transmit]
	events    fifo.Queue[ClientEvent]
	stats     ClientStats
}

type clientKey struct {
	peer   netip.Addr
	domain string
}

type assignment struct {
	id       AssignmentID
	msg      AssignedIPs
	packet   []byte
	state    AssignmentState
	sends    int
	nextSend time.Time // when pending: the next send, or giving up if sends == MaxSends
}

// NewClient makes a Client.
func NewClient(cfg ClientConfig) (*Client, error) {
	if !cfg.Local.Is6() || cfg.Local.Zone() != "" {
		return nil, fmt.Errorf("p2pcontrol client: %w: Local %q is not an IPv6 address", ErrInvalidConfig, cfg.Local)
	}
	if cfg.InitialRetransmit < 0 || cfg.MaxRetransmit < 0 || cfg.MaxSends < 0 {
		return nil, fmt.Errorf("p2pcontrol client: %w: negative retransmit setting", ErrInvalidConfig)
	}
	if cfg.InitialRetransmit == 0 {
		cfg.InitialRetransmit = DefaultInitialRetransmit
	}
	if cfg.MaxRetransmit == 0 {
		cfg.MaxRetransmit = DefaultMaxRetransmit
	}
	if cfg.MaxRetransmit < cfg.InitialRetransmit {
		cfg.MaxRetransmit = cfg.InitialRetransmit
	}
	if cfg.MaxSends == 0 {
		cfg.MaxSends = DefaultMaxSends
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{cfg: cfg, log: log, entries: make(map[clientKey]*assignment)}, nil
}

// Assign records that the client assigned proxyIPs to domain (of DNS resource resource) and that gateway
// peer (its tunnel IPv6 address) must set up the NAT for them. It queues an AssignedIPs transmit and
// returns the assignment's ID. If the same assignment (same resource and proxy IPs, in order) is already
// pending or confirmed for this peer and domain, it does nothing and returns that assignment's ID. A
// different assignment replaces a pending one (EventSuperseded) or a finished one. The domain is compared
// and sent in lower case without trailing dot.
func (c *Client) Assign(peer netip.Addr, resource, domain string, proxyIPs []netip.Addr, now time.Time) (AssignmentID, error) {
	msg := AssignedIPs{
		Resource: strings.ToLower(resource),
		Domain:   normDomain(domain),
		ProxyIPs: slices.Clone(proxyIPs),
		Seq:      uint64(c.lastID + 1),
	}
	key := clientKey{peer: peer, domain: msg.Domain}
	if e, ok := c.entries[key]; ok && (e.state == StatePending || e.state == StateConfirmed) &&
		e.msg.Resource == msg.Resource && slices.Equal(e.msg.ProxyIPs, msg.ProxyIPs) {
		return e.id, nil
	}
	pkt, err := Encode(c.cfg.Local, peer, msg)
	if err != nil {
		return 0, fmt.Errorf("assign %s to %s: %w", msg.Domain, peer, err)
	}
	if e, ok := c.entries[key]; ok && e.state == StatePending {
		c.finish(key, e, EventSuperseded)
	}
	c.lastID++
	e := &assignment{id: c.lastID, msg: msg, packet: pkt, state: StatePending}
	c.entries[key] = e
	c.send(peer, e, now)
	c.log.Debug("p2p control: assigned proxy IPs", "peer", peer, "domain", msg.Domain, "id", e.id)
	return e.id, nil
}

// send queues e's packet and schedules the next send (or giving up).
func (c *Client) send(peer netip.Addr, e *assignment, now time.Time) {
	c.transmits.Push(Transmit{Peer: peer, Packet: e.packet})
	c.stats.Sends++
	if e.sends > 0 {
		c.stats.Retransmits++
	}
	wait := c.cfg.InitialRetransmit
	for i := 0; i < e.sends && wait < c.cfg.MaxRetransmit; i++ {
		wait *= 2
	}
	e.sends++
	e.nextSend = now.Add(min(wait, c.cfg.MaxRetransmit))
}

// finish ends a pending assignment with kind and reports it.
func (c *Client) finish(key clientKey, e *assignment, kind ClientEventKind) {
	switch kind {
	case EventConfirmed:
		e.state = StateConfirmed
	case EventRejected, EventGaveUp:
		e.state = StateFailed
	}
	c.events.Push(ClientEvent{
		Kind: kind, Peer: key.peer, ID: e.id,
		Resource: e.msg.Resource, Domain: e.msg.Domain, ProxyIPs: slices.Clone(e.msg.ProxyIPs),
	})
}

// State returns the state of the latest assignment for peer and domain, and its ID.
func (c *Client) State(peer netip.Addr, domain string) (AssignmentState, AssignmentID) {
	e, ok := c.entries[clientKey{peer: peer, domain: normDomain(domain)}]
	if !ok {
		return StateNone, 0
	}
	return e.state, e.id
}

// HandlePacket handles a control packet the client received from the tunnel (its source is the gateway's
// tunnel address, as wireguard-go's cryptokey routing guarantees). It returns the Decode errors (drop and
// count the packet), ErrWrongDestination, or ErrUnexpectedEvent for an AssignedIPs.
func (c *Client) HandlePacket(pkt []byte, now time.Time) error {
	p, err := Decode(pkt)
	if err != nil {
		return fmt.Errorf("p2p control client: %w", err)
	}
	if p.Dst != c.cfg.Local {
		return fmt.Errorf("p2p control client: %w: %s", ErrWrongDestination, p.Dst)
	}
	switch m := p.Msg.(type) {
	case DomainStatus:
		c.HandleDomainStatus(p.Src, m, now)
	case Goodbye:
		c.RemovePeer(p.Src)
		c.events.Push(ClientEvent{Kind: EventPeerGoodbye, Peer: p.Src})
	default:
		return fmt.Errorf("p2p control client: %w: %s from %s", ErrUnexpectedEvent, p.Msg.Kind(), p.Src)
	}
	return nil
}

// HandleDomainStatus handles a gateway's DomainStatus. It ends the pending assignment for (peer, domain)
// (EventConfirmed or EventRejected) if the status answers it: same resource, and seq equal to its ID (or no
// seq). Anything else is a duplicate or a late answer and is dropped.
func (c *Client) HandleDomainStatus(peer netip.Addr, m DomainStatus, _ time.Time) {
	key := clientKey{peer: peer, domain: normDomain(m.Domain)}
	e, ok := c.entries[key]
	if !ok || e.state != StatePending || !strings.EqualFold(e.msg.Resource, m.Resource) ||
		(m.Seq != 0 && AssignmentID(m.Seq) != e.id) {
		c.stats.StaleStatuses++
		c.log.Debug("p2p control: dropped stale DomainStatus", "peer", peer, "domain", m.Domain, "seq", m.Seq)
		return
	}
	if m.Status == NatActive {
		c.finish(key, e, EventConfirmed)
	} else {
		c.finish(key, e, EventRejected)
	}
}

// PollTimeout returns when HandleTimeout must next be called, if anything is pending.
func (c *Client) PollTimeout() (time.Time, bool) {
	var at time.Time
	found := false
	for _, e := range c.entries {
		if e.state == StatePending && (!found || e.nextSend.Before(at)) {
			at, found = e.nextSend, true
		}
	}
	return at, found
}

// HandleTimeout retransmits every pending assignment whose time has come, and gives up (EventGaveUp) on
// those already sent MaxSends times. Calling it early or repeatedly is harmless.
func (c *Client) HandleTimeout(now time.Time) {
	var due []clientKey
	for k, e := range c.entries {
		if e.state == StatePending && !now.Before(e.nextSend) {
			due = append(due, k)
		}
	}
	slices.SortFunc(due, func(a, b clientKey) int { return cmp.Compare(c.entries[a].id, c.entries[b].id) })
	for _, k := range due {
		e := c.entries[k]
		if e.sends >= c.cfg.MaxSends {
			c.stats.GaveUp++
			c.log.Debug("p2p control: gave up on assignment", "peer", k.peer, "domain", k.domain, "id", e.id, "sends", e.sends)
			c.finish(k, e, EventGaveUp)
			continue
		}
		c.send(k.peer, e, now)
	}
}

// PollTransmit returns the next packet to send into the tunnel.
func (c *Client) PollTransmit() (Transmit, bool) { return c.transmits.Pop() }

// PollEvent returns the next event.
func (c *Client) PollEvent() (ClientEvent, bool) { return c.events.Pop() }

// RemovePeer drops all state for a gateway (its connection is gone): pending assignments end with
// EventAborted and queued transmits to it are discarded.
func (c *Client) RemovePeer(peer netip.Addr) {
	var gone []clientKey
	for k := range c.entries {
		if k.peer == peer {
			gone = append(gone, k)
		}
	}
	slices.SortFunc(gone, func(a, b clientKey) int { return cmp.Compare(c.entries[a].id, c.entries[b].id) })
	for _, k := range gone {
		if e := c.entries[k]; e.state == StatePending {
			c.finish(k, e, EventAborted)
		}
		delete(c.entries, k)
	}
	c.transmits.DeleteFunc(func(t Transmit) bool { return t.Peer == peer })
}

// Forget drops the state for a peer's domain (e.g. its proxy IPs were released), so the next Assign for it
// starts afresh even with the same content. A pending assignment ends with EventAborted.
func (c *Client) Forget(peer netip.Addr, domain string) {
	key := clientKey{peer: peer, domain: normDomain(domain)}
	if e, ok := c.entries[key]; ok {
		if e.state == StatePending {
			c.finish(key, e, EventAborted)
		}
		delete(c.entries, key)
	}
}

// SayGoodbye queues a Goodbye to peer and drops all state for it (as RemovePeer).
func (c *Client) SayGoodbye(peer netip.Addr) error {
	pkt, err := Encode(c.cfg.Local, peer, Goodbye{})
	if err != nil {
		return fmt.Errorf("goodbye to %s: %w", peer, err)
	}
	c.RemovePeer(peer)
	c.transmits.Push(Transmit{Peer: peer, Packet: pkt})
	return nil
}

// Stats returns the client's counters.
func (c *Client) Stats() ClientStats { return c.stats }
