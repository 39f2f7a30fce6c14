package relay

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"

	"github.com/pion/turn/v5"
)

// Errors of the relay address generator; pion answers them with 508
// (Insufficient Capacity).
var (
	// ErrFamilyNotServed: the relay has no public address of the requested family.
	ErrFamilyNotServed = errors.New("address family not served by this relay")
	// ErrNoRelayPort: no free port was found in the relay port range.
	ErrNoRelayPort = errors.New("no free relay port")
	// ErrTCPUnsupported: TCP allocations (RFC 6062) are not offered.
	ErrTCPUnsupported = errors.New("TCP relaying is not supported")
)

// relayPortTries is how many random ports an allocation tries before 508.
const relayPortTries = 32

// maxScanSpan is the largest port range scanned port by port after the
// random tries fail.
const maxScanSpan = 4096

// addressGenerator binds relay sockets in the configured port range and
// advertises the public address of the family. It implements
// turn.RelayAddressGenerator.
type addressGenerator struct {
	public4, public6 netip.Addr
	bind4, bind6     netip.Addr
	low, high        int
	opts             socketOptions
	stats            *stats
	fast             *fastPath // nil: no fast path
	guard            *sendGuard
	// worker reads the relay sockets; each listener socket has its own
	// generator (forWorker), so an allocation's two directions are handled
	// by the same worker.
	worker *worker
	inbox  *inboxBudget
	opener *socketOpener
}

// forWorker is a copy of g whose relay sockets w reads.
func (g *addressGenerator) forWorker(w *worker) *addressGenerator {
	c := *g
	c.worker = w
	return &c
}

var _ turn.RelayAddressGenerator = (*addressGenerator)(nil)

// Validate implements turn.RelayAddressGenerator.
func (g *addressGenerator) Validate() error {
	if g.low < 1 || g.high > 65535 || g.low > g.high {
		return fmt.Errorf("relay port range %d-%d: %w", g.low, g.high, ErrInvalidConfig)
	}
	return nil
}

// AllocatePacketConn implements turn.RelayAddressGenerator.
func (g *addressGenerator) AllocatePacketConn(conf turn.AllocateListenerConfig) (net.PacketConn, net.Addr, error) {
	var bind, public netip.Addr
	switch conf.Network {
	case "udp4":
		bind, public = g.bind4, g.public4
	case "udp6":
		bind, public = g.bind6, g.public6
	default:
		return nil, nil, fmt.Errorf("network %q: %w", conf.Network, ErrFamilyNotServed)
	}
	if !public.IsValid() {
		return nil, nil, fmt.Errorf("network %q: %w", conf.Network, ErrFamilyNotServed)
	}
	try := func(port int) (net.PacketConn, net.Addr, error) {
		sock, err := g.opener.open(conf.Network, netip.AddrPortFrom(bind, uint16(port)), g.opts) //nolint:gosec // port is within 1..65535
		if err != nil {
			return nil, nil, err
		}
		actual := sock.local.Port()
		rc := &relayConn{workerConn: workerConn{sock: sock, inbox: newInbox(relayInbox, g.inbox)},
			shard: g.stats.shard(int(actual)), stats: g.stats, fast: g.fast, guard: g.guard,
			key: relayKey{v6: conf.Network == "udp6", port: actual}}
		if err := rc.attach(g.worker); err != nil {
			_ = sock.close()
			return nil, nil, err
		}
		if g.fast != nil {
			g.fast.addRelay(rc)
		}
		return rc, &net.UDPAddr{IP: public.AsSlice(), Port: int(actual)}, nil
	}
	if conf.RequestedPort != 0 {
		if conf.RequestedPort < g.low || conf.RequestedPort > g.high {
			return nil, nil, fmt.Errorf("requested port %d: %w", conf.RequestedPort, ErrNoRelayPort)
		}
		return try(conf.RequestedPort)
	}
	span := g.high - g.low + 1
	for range relayPortTries {
		if c, a, err := try(g.low + rand.IntN(span)); err == nil { //nolint:gosec // port choice needs no crypto randomness
			return c, a, nil
		}
	}
	// A small range may be nearly full: look at every port once.
	if span <= maxScanSpan {
		start := rand.IntN(span) //nolint:gosec // as above
		for i := range span {
			if c, a, err := try(g.low + (start+i)%span); err == nil {
				return c, a, nil
			}
		}
	}
	return nil, nil, fmt.Errorf("range %d-%d: %w", g.low, g.high, ErrNoRelayPort)
}

// AllocateListener implements turn.RelayAddressGenerator; TCP is not offered.
func (g *addressGenerator) AllocateListener(turn.AllocateListenerConfig) (net.Listener, net.Addr, error) {
	return nil, nil, ErrTCPUnsupported
}

// AllocateConn implements turn.RelayAddressGenerator; TCP is not offered.
func (g *addressGenerator) AllocateConn(turn.AllocateConnConfig) (net.Conn, error) {
	return nil, ErrTCPUnsupported
}
