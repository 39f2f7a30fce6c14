package relay

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
)

// fastPath relays ChannelData without going through pion.
//
// pion/turn handles each datagram with a full request dispatch (debug-log
// formatting arguments, decoding, a five-tuple fingerprint string, a channel
// scan) and allocates for each one. Channel data is the bulk of a relay's
// traffic and its rules are simple, so the relay mirrors pion's channel
// bindings from its EventHandler (OnChannelCreated/OnChannelDeleted) into two
// tables and forwards bound channels itself:
//
//   - client → peer: the listener socket's worker looks up (client address,
//     channel number) and writes the payload from the allocation's relay socket;
//   - peer → client: the relay socket's worker looks up the peer and sends
//     ChannelData (built in place in the receive buffer) to the client from a
//     listener socket of the same address.
//
// Semantics are pion's: a bound channel relays in both directions (pion does
// not check the permission for channel traffic either); everything else —
// STUN, Send/Data indications, unknown channels — still goes to pion. A
// binding leaves the tables when pion deletes it (expiry, allocation end).
type fastPath struct {
	mu        sync.RWMutex
	relays    map[relayKey]*relayConn  // relay sockets by family and port
	channels  map[chanKey]fastChannel  // client side: (client, number) → peer
	listeners map[bool][]*listenerConn // by family (true: IPv6), for peer → client sends
}

type relayKey struct {
	v6   bool
	port uint16
}

type chanKey struct {
	client netip.AddrPort
	number uint16
}

type fastChannel struct {
	relay *relayConn
	peer  netip.AddrPort
}

// peerChannel is a relay socket's view of a binding: where ChannelData for
// datagrams from that peer goes.
type peerChannel struct {
	number uint16
	client netip.AddrPort
	out    *udpSocket
}

func newFastPath() *fastPath {
	return &fastPath{
		relays:    map[relayKey]*relayConn{},
		channels:  map[chanKey]fastChannel{},
		listeners: map[bool][]*listenerConn{},
	}
}

func (f *fastPath) addListener(l *listenerConn, v6 bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.listeners[v6] = append(f.listeners[v6], l)
}

func (f *fastPath) addRelay(r *relayConn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.relays[r.key] = r
}

func (f *fastPath) removeRelay(r *relayConn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.relays[r.key] == r {
		delete(f.relays, r.key)
	}
}

// bind mirrors a channel pion created.
func (f *fastPath) bind(client, relayAddr, peer net.Addr, number uint16) {
	c, ok1 := udpAddrPort(client)
	ra, ok2 := udpAddrPort(relayAddr)
	p, ok3 := udpAddrPort(peer)
	if !ok1 || !ok2 || !ok3 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.relays[relayKey{v6: ra.Addr().Is6(), port: ra.Port()}]
	outs := f.listeners[c.Addr().Is6()]
	if r == nil || len(outs) == 0 {
		return // not ours (cannot happen) or shutting down: pion's slow path still works
	}
	out := outs[int(c.Port())%len(outs)].sock
	f.channels[chanKey{client: c, number: number}] = fastChannel{relay: r, peer: p}
	r.setChannel(p, &peerChannel{number: number, client: c, out: out})
}

// unbind forgets a channel pion deleted.
func (f *fastPath) unbind(client, relayAddr, peer net.Addr, number uint16) {
	c, ok1 := udpAddrPort(client)
	p, ok2 := udpAddrPort(peer)
	if !ok1 || !ok2 {
		return
	}
	f.mu.Lock()
	k := chanKey{client: c, number: number}
	fc, ok := f.channels[k]
	delete(f.channels, k)
	f.mu.Unlock()
	if ok {
		fc.relay.setChannel(p, nil)
	}
}

// lookup returns the binding for ChannelData number from client.
func (f *fastPath) lookup(client netip.AddrPort, number uint16) (fastChannel, bool) {
	f.mu.RLock()
	fc, ok := f.channels[chanKey{client: client, number: number}]
	f.mu.RUnlock()
	return fc, ok
}

// route finds where ChannelData b from client goes: the allocation, the
// peer and the payload; false leaves the datagram to pion (not ChannelData,
// malformed, or no bound channel).
func (f *fastPath) route(b []byte, client netip.AddrPort) (fastChannel, []byte, bool) {
	if len(b) < 4 || b[0]&0xC0 != 0x40 {
		return fastChannel{}, nil, false
	}
	length := int(binary.BigEndian.Uint16(b[2:4]))
	if 4+length > len(b) {
		return fastChannel{}, nil, false
	}
	fc, ok := f.lookup(client, binary.BigEndian.Uint16(b[0:2]))
	if !ok {
		return fastChannel{}, nil, false
	}
	return fc, b[4 : 4+length], true
}

func udpAddrPort(a net.Addr) (netip.AddrPort, bool) {
	u, ok := a.(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}, false
	}
	ap := u.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ap.IsValid()
}
