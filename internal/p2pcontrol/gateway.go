package p2pcontrol

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/snowgate/snowgate/internal/fifo"
)

// DefaultMaxDomainsPerPeer is the default of GatewayConfig.MaxDomainsPerPeer.
const DefaultMaxDomainsPerPeer = 4096

// Errors of the gateway state machine.
var (
	// ErrStale means Gateway.Complete was called for an assignment that is no longer the current one for
	// its client and domain (a newer one superseded it, or the client is gone): its NAT must not be kept.
	ErrStale = errors.New("stale DNS-resource NAT assignment")
	// ErrTooManyDomains means a client has MaxDomainsPerPeer domains set up already; the new one was
	// answered Inactive.
	ErrTooManyDomains = errors.New("too many DNS-resource NAT domains for one client")
)

// GatewayEventKind says what a GatewayEvent asks of the gateway loop.
type GatewayEventKind uint8

// Gateway event kinds.
const (
	// EventSetupNAT asks the loop to check that the client may access Assignment.Resource, resolve
	// Assignment.Domain, set up the NAT from Assignment.ProxyIPs, and then call Gateway.Complete.
	EventSetupNAT GatewayEventKind = iota + 1
	// EventClientGoodbye: the client sent Goodbye; the loop drops the client (connection, NAT, filters).
	// Only Peer is set.
	EventClientGoodbye
)

// String returns the event kind's name.
func (k GatewayEventKind) String() string {
	switch k {
	case EventSetupNAT:
		return "setup-nat"
	case EventClientGoodbye:
		return "client-goodbye"
	default:
		return fmt.Sprintf("GatewayEventKind(%d)", uint8(k))
	}
}

// GatewayEvent is an output of Gateway for the gateway loop.
type GatewayEvent struct {
	// Kind says what to do.
	Kind GatewayEventKind
	// Peer is the client's tunnel IPv6 address.
	Peer netip.Addr
	// Assignment is the client's AssignedIPs (EventSetupNAT only).
	Assignment AssignedIPs
}

// GatewayConfig configures a Gateway.
type GatewayConfig struct {
	// Local is the gateway's tunnel IPv6 address, the source of its control packets. Required.
	Local netip.Addr
	// MaxDomainsPerPeer bounds the domains tracked per client. 0 → DefaultMaxDomainsPerPeer.
	MaxDomainsPerPeer int
	// Logger receives debug and warn logs; nil discards them.
	Logger *slog.Logger
}

// Gateway is the gateway's side of the DNS-resource NAT setup, sans-IO. Handling AssignedIPs is idempotent:
// a new assignment for a (client, domain) yields one EventSetupNAT; retransmits of it while the loop works
// on it yield nothing more, and the answer (DomainStatus) goes out when the loop calls Complete; after that,
// every retransmit (seq not above the answered one, or no seq) is answered at once with the same status,
// echoing its seq. The same content under a higher seq means the client asks again (it gave up, or was
// rejected and retries): that sets the domain up again (a new EventSetupNAT, re-resolving), as Firezone's
// gateway does for every AssignedIps. A different resource or different proxy IPs for the domain supersede
// the current assignment. The NAT table itself belongs to the gateway loop.
//
// It is not safe for concurrent use.
type Gateway struct {
	cfg       GatewayConfig
	log       *slog.Logger
	peers     map[netip.Addr]map[string]*gwEntry
	transmits fifo.Queue[Transmit]
	events    fifo.Queue[GatewayEvent]
}

type gwEntry struct {
	msg    AssignedIPs // the current assignment; Seq is the latest one seen for it
	done   bool        // Complete was called
	status NatStatus   // when done
}

// NewGateway makes a Gateway.
func NewGateway(cfg GatewayConfig) (*Gateway, error) {
	if !cfg.Local.Is6() || cfg.Local.Zone() != "" {
		return nil, fmt.Errorf("p2pcontrol gateway: %w: Local %q is not an IPv6 address", ErrInvalidConfig, cfg.Local)
	}
	if cfg.MaxDomainsPerPeer < 0 {
		return nil, fmt.Errorf("p2pcontrol gateway: %w: negative MaxDomainsPerPeer", ErrInvalidConfig)
	}
	if cfg.MaxDomainsPerPeer == 0 {
		cfg.MaxDomainsPerPeer = DefaultMaxDomainsPerPeer
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Gateway{cfg: cfg, log: log, peers: make(map[netip.Addr]map[string]*gwEntry)}, nil
}

// HandlePacket handles a control packet the gateway received from a client through the tunnel (its source
// is the client's tunnel address, which the caller has checked). It returns the Decode errors (drop and
// count the packet), ErrWrongDestination, ErrUnexpectedEvent for a DomainStatus, or ErrTooManyDomains.
func (g *Gateway) HandlePacket(pkt []byte, now time.Time) error {
	p, err := Decode(pkt)
	if err != nil {
		return fmt.Errorf("p2p control gateway: %w", err)
	}
	if p.Dst != g.cfg.Local {
		return fmt.Errorf("p2p control gateway: %w: %s", ErrWrongDestination, p.Dst)
	}
	switch m := p.Msg.(type) {
	case AssignedIPs:
		return g.HandleAssignedIPs(p.Src, m, now)
	case Goodbye:
		g.RemovePeer(p.Src)
		g.events.Push(GatewayEvent{Kind: EventClientGoodbye, Peer: p.Src})
		return nil
	default:
		return fmt.Errorf("p2p control gateway: %w: %s from %s", ErrUnexpectedEvent, p.Msg.Kind(), p.Src)
	}
}

// HandleAssignedIPs handles a client's AssignedIPs (see Gateway for the rules). It returns
// ErrInvalidAddress or ErrInvalidMessage for bad input, and ErrTooManyDomains.
func (g *Gateway) HandleAssignedIPs(peer netip.Addr, m AssignedIPs, _ time.Time) error {
	if !peer.Is6() || peer.Zone() != "" {
		return fmt.Errorf("p2p control gateway: %w: peer %q", ErrInvalidAddress, peer)
	}
	if err := m.validate(); err != nil {
		return fmt.Errorf("p2p control gateway: %w: %w", ErrInvalidMessage, err)
	}
	m.Resource = strings.ToLower(m.Resource)
	domains := g.peers[peer]
	if domains == nil {
		domains = make(map[string]*gwEntry)
		g.peers[peer] = domains
	}
	key := normDomain(m.Domain)
	e, ok := domains[key]
	if ok && e.msg.Resource == m.Resource && slices.Equal(e.msg.ProxyIPs, m.ProxyIPs) {
		switch {
		case !e.done: // the loop is on it; answer the newest seq when it completes
			e.msg.Seq = max(e.msg.Seq, m.Seq)
			return nil
		case m.Seq <= e.msg.Seq: // a retransmit (or a seq-less Firezone client): the same answer
			g.answer(peer, e, m.Seq)
			return nil
		}
		// A newer assignment number with the same content: the client asks again, so set up again
		// (re-resolve), as Firezone does for every AssignedIps.
	}
	if !ok && len(domains) >= g.cfg.MaxDomainsPerPeer {
		g.log.Warn("p2p control: too many DNS-resource NAT domains for client", "peer", peer, "max", g.cfg.MaxDomainsPerPeer)
		g.answer(peer, &gwEntry{msg: m, done: true, status: NatInactive}, m.Seq)
		return fmt.Errorf("p2p control gateway: %w: %s", ErrTooManyDomains, peer)
	}
	domains[key] = &gwEntry{msg: AssignedIPs{
		Resource: m.Resource, Domain: m.Domain, ProxyIPs: slices.Clone(m.ProxyIPs), Seq: m.Seq,
	}}
	g.events.Push(GatewayEvent{Kind: EventSetupNAT, Peer: peer, Assignment: AssignedIPs{
		Resource: m.Resource, Domain: m.Domain, ProxyIPs: slices.Clone(m.ProxyIPs), Seq: m.Seq,
	}})
	return nil
}

// answer queues the DomainStatus for e, echoing seq.
func (g *Gateway) answer(peer netip.Addr, e *gwEntry, seq uint64) {
	pkt, err := Encode(g.cfg.Local, peer, DomainStatus{
		Resource: e.msg.Resource, Domain: e.msg.Domain, Status: e.status, Seq: seq,
	})
	if err != nil { // cannot happen: peer and message were validated on the way in
		g.log.Warn("p2p control: cannot encode DomainStatus", "peer", peer, "error", err)
		return
	}
	g.transmits.Push(Transmit{Peer: peer, Packet: pkt})
}

// IsCurrent reports whether a is still the current assignment for its client and domain (same resource and
// proxy IPs); the loop checks it before installing a NAT it worked on.
func (g *Gateway) IsCurrent(peer netip.Addr, a AssignedIPs) bool {
	e, ok := g.peers[peer][normDomain(a.Domain)]
	return ok && strings.EqualFold(e.msg.Resource, a.Resource) && slices.Equal(e.msg.ProxyIPs, a.ProxyIPs)
}

// Complete records the loop's result for an EventSetupNAT's assignment (NatActive: the NAT is installed;
// NatInactive: not allowed or not resolvable) and queues the DomainStatus answer. It returns ErrStale if the
// assignment is no longer current (nothing is sent; the loop must drop that NAT). Completing twice is
// harmless.
func (g *Gateway) Complete(peer netip.Addr, a AssignedIPs, status NatStatus, _ time.Time) error {
	if !g.IsCurrent(peer, a) {
		return fmt.Errorf("complete %s for %s: %w", a.Domain, peer, ErrStale)
	}
	e := g.peers[peer][normDomain(a.Domain)]
	if e.done && e.status == status {
		return nil
	}
	e.done, e.status = true, status
	g.answer(peer, e, e.msg.Seq)
	return nil
}

// Forget drops the state for a client's domain (the loop expired or removed its NAT), so the next
// AssignedIPs for it sets the NAT up again.
func (g *Gateway) Forget(peer netip.Addr, domain string) {
	domains := g.peers[peer]
	delete(domains, normDomain(domain))
	if len(domains) == 0 {
		delete(g.peers, peer)
	}
}

// RemovePeer drops all state for a client and discards transmits queued to it.
func (g *Gateway) RemovePeer(peer netip.Addr) {
	delete(g.peers, peer)
	g.transmits.DeleteFunc(func(t Transmit) bool { return t.Peer == peer })
}

// SayGoodbye queues a Goodbye to a client and drops all state for it.
func (g *Gateway) SayGoodbye(peer netip.Addr) error {
	pkt, err := Encode(g.cfg.Local, peer, Goodbye{})
	if err != nil {
		return fmt.Errorf("goodbye to %s: %w", peer, err)
	}
	g.RemovePeer(peer)
	g.transmits.Push(Transmit{Peer: peer, Packet: pkt})
	return nil
}

// PollTransmit returns the next packet to send into the tunnel.
func (g *Gateway) PollTransmit() (Transmit, bool) { return g.transmits.Pop() }

// PollEvent returns the next event for the gateway loop.
func (g *Gateway) PollEvent() (GatewayEvent, bool) { return g.events.Pop() }
