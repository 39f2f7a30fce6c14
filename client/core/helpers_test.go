package core

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/snowgate/snowgate/client/dns"
	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
)

// tb is what the helpers need; *testing.T and *rapid.T both provide it.
type tb interface {
	Helper()
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
}

var (
	t0       = time.Unix(1_800_000_000, 0)
	clientV4 = netip.MustParseAddr("100.64.0.2")
	clientV6 = netip.MustParseAddr("fd00:2021:1111::2")
	upstream = netip.MustParseAddrPort("192.0.2.53:53")
	sentV4   = netip.MustParseAddr("100.100.111.1")
	appPort  = uint16(40000)
)

// UUID-shaped ids (the control protocol wants UUIDs for DNS resources).
func rid(n int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", n) }

// testGateway describes a gateway the fake portal hands out.
type testGateway struct {
	id         string
	key, psk   node.Key
	ipv4, ipv6 netip.Addr
}

func gw(n int) testGateway {
	return testGateway{
		id:   fmt.Sprintf("gw-%d", n),
		key:  node.Key{byte(n), 1},
		psk:  node.Key{byte(n), 2},
		ipv4: netip.AddrFrom4([4]byte{100, 64, 1, byte(n)}),
		ipv6: netip.MustParseAddr(fmt.Sprintf("fd00:2021:1111::1:%x", n)),
	}
}

func (g testGateway) flowCreated(resourceID string) portalapi.FlowCreated {
	return portalapi.FlowCreated{
		ResourceID: resourceID, GatewayID: g.id, SiteID: "site-" + g.id,
		GatewayPublicKey: g.key.String(), GatewayIPv4: g.ipv4, GatewayIPv6: g.ipv6,
		PresharedKey:          g.psk.String(),
		ClientIceCredentials:  portalapi.IceCredentials{Username: "cufr", Password: "client-password-of-22c"},
		GatewayIceCredentials: portalapi.IceCredentials{Username: "gufr", Password: "gateway-password-of-22"},
	}
}

func (g testGateway) params() node.ConnectionParams {
	return node.ConnectionParams{ID: g.id, RemoteKey: g.key, PresharedKey: g.psk,
		Local:  node.Credentials{Ufrag: "cufr", Password: "client-password-of-22c"},
		Remote: node.Credentials{Ufrag: "gufr", Password: "gateway-password-of-22"},
		Role:   node.RoleControlling}
}

func cidrRes(id, cidr string, filters ...portalapi.Filter) portalapi.Resource {
	return portalapi.Resource{Type: portalapi.ResourceCIDR, ID: id, Name: "cidr " + cidr, Address: cidr, Filters: filters}
}

func dnsRes(id, pattern string, filters ...portalapi.Filter) portalapi.Resource {
	return portalapi.Resource{Type: portalapi.ResourceDNS, ID: id, Name: "dns " + pattern, Address: pattern, Filters: filters}
}

func internetRes(id string) portalapi.Resource {
	return portalapi.Resource{Type: portalapi.ResourceInternet, ID: id, Name: "Internet"}
}

func initMsg(rs ...portalapi.Resource) portalapi.ClientInit {
	return portalapi.ClientInit{
		Interface: portalapi.Interface{IPv4: clientV4, IPv6: clientV6,
			UpstreamDNS: []portalapi.DNSServer{{Protocol: portalapi.DNSProtocolIPPort, Address: upstream}}},
		Resources: rs,
		Relays: []portalapi.Relay{
			{ID: "relay-1", Type: "turn", Addr: netip.MustParseAddrPort("198.18.0.10:3478"), Username: "u", Password: "p"},
			{ID: "relay-1", Type: "turn", Addr: netip.MustParseAddrPort("[2001:db8::10]:3478"), Username: "u", Password: "p"},
		},
	}
}

// delivered is a packet that reached wireguard-go, and the gateway its AllowedIPs sent it to.
type delivered struct {
	gw      string // "" when no gateway's AllowedIPs hold the destination (wireguard-go drops it)
	pkt     []byte
	passed  bool // Pass verdict (else SendToTunnel)
	control bool // a control-protocol packet
}

type fakeConn struct {
	params  node.ConnectionParams
	allowed []netip.Prefix
}

// harness drives a Client as the tunnel driver would, with a fake node (connections and their AllowedIPs,
// wireguard-go's longest-prefix routing), a fake portal (recorded pushes) and recorded outputs.
type harness struct {
	t   tb
	c   *Client
	now time.Time

	conns       map[string]*fakeConn
	established map[string]bool // connections the (fake) node reported established
	pushes      []tunnel.PortalPush
	pushTimes   []time.Time
	out         []delivered
	tun         [][]byte
	forwards    []dns.Forward
	tcpReplies  []DNSTCPReply
	tcpPackets  [][]byte
	cancels     []dns.ForwardID
	actions     []tunnel.Action // every action, in order
	reconnects  int
	resets      int
	dnsRoams    int
	// failUpsert makes the next NodeUpsert of a new (or changed) connection fail.
	failUpsert error
	// ambiguous records deliveries whose destination two gateways' AllowedIPs held with the same length.
	ambiguous []string
}

func newHarness(t tb, cfg Config) *harness {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return &harness{t: t, c: c, now: t0, conns: make(map[string]*fakeConn), established: make(map[string]bool)}
}

// run carries out the core's actions until none is left.
func (h *harness) run() {
	h.t.Helper()
	for {
		a, ok := h.c.PollAction()
		if !ok {
			return
		}
		h.actions = append(h.actions, a)
		switch a := a.(type) {
		case tunnel.PortalPush:
			h.pushes = append(h.pushes, a)
			h.pushTimes = append(h.pushTimes, h.now)
		case tunnel.PortalReconnect:
			h.reconnects++
		case tunnel.NodeUpsert:
			if cur := h.conns[a.Params.ID]; (cur == nil || cur.params != a.Params) && h.failUpsert != nil {
				err := h.failUpsert
				h.failUpsert = nil
				h.c.HandleActionFailed(a, err, h.now)
				continue
			}
			fc := h.conns[a.Params.ID]
			if fc == nil {
				fc = &fakeConn{}
				h.conns[a.Params.ID] = fc
			}
			if fc.params != a.Params {
				h.established[a.Params.ID] = false
			}
			fc.params = a.Params
			if a.AllowedIPs != nil {
				fc.allowed = slices.Clone(a.AllowedIPs)
			}
		case tunnel.NodeAllowedIPs:
			if fc := h.conns[a.ID]; fc != nil {
				fc.allowed = slices.Clone(a.Prefixes)
			} else {
				h.c.HandleActionFailed(a, node.ErrUnknownConnection, h.now)
			}
		case tunnel.NodeRemove:
			delete(h.conns, a.ID)
			delete(h.established, a.ID)
		case tunnel.NodeReset:
			h.resets++
			clear(h.conns)
			clear(h.established)
		case tunnel.SendToTunnel:
			for _, p := range a.Packets {
				h.deliver(p, false)
			}
		case tunnel.WriteToTUN:
			h.tun = append(h.tun, a.Packets...)
		case DNSForward:
			h.forwards = append(h.forwards, a.Forward)
		case DNSTCPReply:
			h.tcpReplies = append(h.tcpReplies, a)
		case DNSTCPPacket:
			h.tcpPackets = append(h.tcpPackets, a.Packet)
		case DNSCancel:
			h.cancels = append(h.cancels, a.IDs...)
		case DNSRoam:
			h.dnsRoams++
		}
	}
}

// route is wireguard-go's cryptokey routing: the longest AllowedIPs prefix holding dst.
func (h *harness) route(dst netip.Addr) string {
	best, bits, ties := "", -1, 0
	for _, id := range sortedKeys(h.conns) {
		for _, p := range h.conns[id].allowed {
			if !p.Contains(dst) {
				continue
			}
			switch {
			case p.Bits() > bits:
				best, bits, ties = id, p.Bits(), 0
			case p.Bits() == bits && id != best:
				ties++
			}
		}
	}
	if ties > 0 {
		h.ambiguous = append(h.ambiguous, dst.String())
	}
	return best
}

func (h *harness) deliver(pkt []byte, passed bool) {
	p, err := ippacket.Parse(pkt)
	if err != nil {
		h.t.Fatalf("core sent a packet ippacket cannot parse: %v", err)
	}
	h.out = append(h.out, delivered{gw: h.route(p.Dst()), pkt: slices.Clone(pkt), passed: passed,
		control: p2pcontrol.IsControl(pkt)})
}

// tunIn feeds a packet from the TUN device; a passed packet is routed by the fake wireguard-go.
func (h *harness) tunIn(pkt []byte) tunnel.Verdict {
	h.t.Helper()
	v := h.c.HandleTunInput(pkt, h.now)
	if v == tunnel.Pass {
		h.deliver(pkt, true)
	}
	h.run()
	return v
}

func (h *harness) portal(m portalapi.Message) {
	h.t.Helper()
	h.c.HandlePortalMessage(m, h.now)
	h.run()
}

func (h *harness) nodeEvent(ev node.Event) {
	h.t.Helper()
	h.c.HandleNodeEvent(ev, h.now)
	h.run()
}

func (h *harness) establish(gwID string) {
	h.t.Helper()
	if h.conns[gwID] != nil {
		h.established[gwID] = true
	}
	h.nodeEvent(node.Event{Kind: node.EventConnectionEstablished, ConnectionID: gwID})
}

// advance moves the clock by d, calling HandleTimeout at every deadline on the way.
func (h *harness) advance(d time.Duration) {
	h.t.Helper()
	end := h.now.Add(d)
	for i := 0; i < 10000; i++ {
		dl, ok := h.c.PollTimeout()
		if !ok || dl.After(end) {
			break
		}
		if dl.After(h.now) {
			h.now = dl
		}
		h.c.HandleTimeout(h.now)
		h.run()
	}
	h.now = end
	h.c.HandleTimeout(h.now)
	h.run()
}

// createFlows returns the resource ids of the create_flow pushes since index from.
func (h *harness) createFlows(from int) []string {
	var ids []string
	for _, p := range h.pushes[from:] {
		if cf, ok := p.Payload.(portalapi.CreateFlow); ok {
			ids = append(ids, cf.ResourceID)
		}
	}
	return ids
}

func (h *harness) takeOut() []delivered {
	o := h.out
	h.out = nil
	return o
}

func (h *harness) takeTUN() [][]byte {
	o := h.tun
	h.tun = nil
	return o
}

// --- packets ---

// packet builds an IPv4 or IPv6 packet with a valid IPv4 header checksum (upper-layer checksums are not
// checked by the core). The payload carries seq so that tests can tell packets apart.
func packet(src, dst netip.Addr, proto ippacket.Protocol, dport uint16, seq uint32) []byte {
	var l4 []byte
	switch proto {
	case ippacket.ProtoTCP:
		l4 = make([]byte, 20+4)
		binary.BigEndian.PutUint16(l4[0:], appPort)
		binary.BigEndian.PutUint16(l4[2:], dport)
		l4[12] = 5 << 4
		l4[13] = 0x02 // SYN
		binary.BigEndian.PutUint32(l4[20:], seq)
	case ippacket.ProtoUDP:
		l4 = make([]byte, 8+4)
		binary.BigEndian.PutUint16(l4[0:], appPort)
		binary.BigEndian.PutUint16(l4[2:], dport)
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		binary.BigEndian.PutUint32(l4[8:], seq)
	default: // echo request
		l4 = make([]byte, 8+4)
		if dst.Is4() {
			proto, l4[0] = ippacket.ProtoICMP, 8
		} else {
			proto, l4[0] = ippacket.ProtoICMPv6, 128
		}
		binary.BigEndian.PutUint16(l4[4:], 7)
		binary.BigEndian.PutUint32(l4[8:], seq)
	}
	return ipPacket(src, dst, proto, l4)
}

func ipPacket(src, dst netip.Addr, proto ippacket.Protocol, l4 []byte) []byte {
	if dst.Is4() {
		b := make([]byte, 20+len(l4))
		b[0] = 0x45
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		b[8], b[9] = 64, byte(proto)
		s, d := src.As4(), dst.As4()
		copy(b[12:], s[:])
		copy(b[16:], d[:])
		binary.BigEndian.PutUint16(b[10:], ^checksum(b[:20], 0))
		copy(b[20:], l4)
		return b
	}
	b := make([]byte, 40+len(l4))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(l4)))
	b[6], b[7] = byte(proto), 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	copy(b[40:], l4)
	return b
}

// checksum is the 16-bit one's complement sum of b (not inverted), starting at acc.
func checksum(b []byte, acc uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		acc += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		acc += uint32(b[len(b)-1]) << 8
	}
	for acc>>16 != 0 {
		acc = acc&0xFFFF + acc>>16
	}
	return uint16(acc)
}

// seqOf returns the sequence number a test packet carries (the last 4 bytes).
func seqOf(pkt []byte) uint32 { return binary.BigEndian.Uint32(pkt[len(pkt)-4:]) }

// icmpError parses an ICMP error the core wrote to the TUN device: type, code, and the quoted packet's
// sequence number. It checks the ICMP checksum.
func icmpError(t tb, pkt []byte) (typ, code uint8, seq uint32) {
	t.Helper()
	p, err := ippacket.Parse(pkt)
	if err != nil {
		t.Fatalf("ICMP error does not parse: %v", err)
	}
	typ, code, err = p.ICMP()
	if err != nil {
		t.Fatalf("not ICMP: %v", err)
	}
	var acc uint32
	if p.Version() == 6 {
		s, d := p.Src().As16(), p.Dst().As16()
		acc = uint32(checksum(s[:], 0)) + uint32(checksum(d[:], 0)) + uint32(len(p.Payload())) + 58
	}
	if got := checksum(p.Payload(), acc); got != 0xFFFF {
		t.Fatalf("ICMP checksum wrong (sum %#x)", got)
	}
	q, err := p.Quoted()
	if err != nil {
		t.Fatalf("ICMP error quotes nothing: %v", err)
	}
	return typ, code, seqOf(q.Bytes())
}

// isUnreachable reports whether (typ, code) is the core's "unreachable" for the family.
func isUnreachable(v4 bool, typ, code uint8) bool {
	if v4 {
		return typ == 3 && code == 1
	}
	return typ == 1 && code == 3
}

func isProhibited(v4 bool, typ, code uint8) bool {
	if v4 {
		return typ == 3 && code == 13
	}
	return typ == 1 && code == 1
}

// --- DNS ---

func dnsQuery(t tb, name string, qtype uint16, id uint16) []byte {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	m.Id = id
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("pack: %v", err)
	}
	return b
}

// udpQueryPacket is an application's UDP DNS query to sentinel.
func udpQueryPacket(t tb, src netip.Addr, sentinel netip.Addr, name string, qtype uint16, id uint16) []byte {
	t.Helper()
	msg := dnsQuery(t, name, qtype, id)
	buf := make([]byte, 40+8+len(msg))
	n, err := ippacket.BuildUDP(buf, netip.AddrPortFrom(src, 5353), netip.AddrPortFrom(sentinel, 53), msg)
	if err != nil {
		t.Fatalf("BuildUDP: %v", err)
	}
	return buf[:n]
}

// dnsAnswer parses a UDP DNS answer packet the core wrote.
func dnsAnswer(t tb, pkt []byte) (from, to netip.AddrPort, m *mdns.Msg) {
	t.Helper()
	p, err := ippacket.Parse(pkt)
	if err != nil {
		t.Fatalf("answer packet: %v", err)
	}
	sp, dp, err := p.Ports()
	if err != nil {
		t.Fatalf("answer ports: %v", err)
	}
	pl, err := p.UDPPayload()
	if err != nil {
		t.Fatalf("answer payload: %v", err)
	}
	m = new(mdns.Msg)
	if err := m.Unpack(pl); err != nil {
		t.Fatalf("answer: %v", err)
	}
	return netip.AddrPortFrom(p.Src(), sp), netip.AddrPortFrom(p.Dst(), dp), m
}

// resolve queries name (A and AAAA) through the core and returns the proxy IPs of the answers.
func (h *harness) resolve(name string) (v4, v6 []netip.Addr) {
	h.t.Helper()
	for _, qt := range []uint16{mdns.TypeA, mdns.TypeAAAA} {
		before := len(h.tun)
		h.tunIn(udpQueryPacket(h.t, clientV4, sentV4, name, qt, 0x4242))
		if len(h.tun) != before+1 {
			h.t.Fatalf("query %s type %d: %d packets written, want 1 answer", name, qt, len(h.tun)-before)
		}
		_, _, m := dnsAnswer(h.t, h.tun[before])
		h.tun = h.tun[:before]
		for _, rr := range m.Answer {
			switch rr := rr.(type) {
			case *mdns.A:
				a, _ := netip.AddrFromSlice(rr.A.To4())
				v4 = append(v4, a)
			case *mdns.AAAA:
				a, _ := netip.AddrFromSlice(rr.AAAA)
				v6 = append(v6, a)
			}
		}
	}
	return v4, v6
}

// domainStatus is a gateway's DomainStatus control packet to the client.
func domainStatus(t tb, g testGateway, resource, domain string, active bool, seq uint64) []byte {
	t.Helper()
	st := p2pcontrol.NatInactive
	if active {
		st = p2pcontrol.NatActive
	}
	pkt, err := p2pcontrol.Encode(g.ipv6, clientV6, p2pcontrol.DomainStatus{Resource: resource, Domain: domain, Status: st, Seq: seq})
	if err != nil {
		t.Fatalf("encode DomainStatus: %v", err)
	}
	return pkt
}

// assignedIPs decodes the AssignedIPs control packets among deliveries.
func assignedIPs(t tb, ds []delivered) []p2pcontrol.AssignedIPs {
	t.Helper()
	var out []p2pcontrol.AssignedIPs
	for _, d := range ds {
		if !d.control {
			continue
		}
		p, err := p2pcontrol.Decode(d.pkt)
		if err != nil {
			t.Fatalf("control packet: %v", err)
		}
		if m, ok := p.Msg.(p2pcontrol.AssignedIPs); ok {
			out = append(out, m)
		}
	}
	return out
}

func dataOnly(ds []delivered) []delivered {
	var out []delivered
	for _, d := range ds {
		if !d.control {
			out = append(out, d)
		}
	}
	return out
}

func netip4(s string) netip.Addr { return netip.MustParseAddr(s) }
