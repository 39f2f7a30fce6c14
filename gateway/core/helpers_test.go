package core_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/snowgate/snowgate/gateway/core"
	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
)

var (
	t0     = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	gwV4   = netip.MustParseAddr("100.64.0.1")
	gwV6   = netip.MustParseAddr("fd00:2021:1111::1")
	relayA = portalapi.Relay{ID: "relay-a", Type: "turn", Addr: netip.MustParseAddrPort("198.18.0.10:3478"), Username: "u", Password: "p"}
	relayB = portalapi.Relay{ID: "relay-b", Type: "turn", Addr: netip.MustParseAddrPort("198.18.0.11:3478"), Username: "u", Password: "p"}
)

// Resource ids (UUIDs, as p2pcontrol requires for DNS resources).
func rid(n int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", n) }

func cidrRes(n int, addr string, filters ...portalapi.Filter) portalapi.Resource {
	return portalapi.Resource{Type: portalapi.ResourceCIDR, ID: rid(n), Name: "cidr", Address: addr, Filters: filters}
}

func dnsRes(n int, pattern string, filters ...portalapi.Filter) portalapi.Resource {
	return portalapi.Resource{Type: portalapi.ResourceDNS, ID: rid(n), Name: "dns", Address: pattern, Filters: filters}
}

func internetRes(n int) portalapi.Resource {
	return portalapi.Resource{Type: portalapi.ResourceInternet, ID: rid(n), Name: "internet"}
}

func tcpF(lo, hi uint16) portalapi.Filter {
	return portalapi.Filter{Protocol: portalapi.ProtocolTCP, PortRangeStart: lo, PortRangeEnd: hi}
}

func udpF(lo, hi uint16) portalapi.Filter {
	return portalapi.Filter{Protocol: portalapi.ProtocolUDP, PortRangeStart: lo, PortRangeEnd: hi}
}

func icmpF() portalapi.Filter { return portalapi.Filter{Protocol: portalapi.ProtocolICMP} }

// testClient is a client as the portal describes it.
type testClient struct {
	id     string
	key    node.Key // public
	psk    node.Key
	v4, v6 netip.Addr
}

func mkClient(n int) testClient {
	var priv, psk node.Key
	priv[0], priv[1] = byte(n), 0x5a
	psk[0], psk[1] = byte(n), 0xa5
	return testClient{
		id:  fmt.Sprintf("client-%d", n),
		key: priv.PublicKey(),
		psk: psk,
		v4:  netip.AddrFrom4([4]byte{100, 64, 1, byte(n)}),
		v6:  netip.MustParseAddr(fmt.Sprintf("fd00:2021:1111::1:%x", n)),
	}
}

func (c testClient) flowClient() portalapi.FlowClient {
	return portalapi.FlowClient{ID: c.id, PublicKey: c.key.String(), PresharedKey: c.psk.String(), IPv4: c.v4, IPv6: c.v6}
}

func (c testClient) creds() (client, gateway portalapi.IceCredentials) {
	return portalapi.IceCredentials{Username: "cu" + c.id, Password: "client-password-" + c.id + "-xxxxxxxx"},
		portalapi.IceCredentials{Username: "gu" + c.id, Password: "gateway-password-" + c.id + "-xxxxxxx"}
}

func (c testClient) params() node.ConnectionParams {
	cc, gc := c.creds()
	return node.ConnectionParams{
		ID: c.id, RemoteKey: c.key, PresharedKey: c.psk,
		Local:  node.Credentials{Ufrag: gc.Username, Password: gc.Password},
		Remote: node.Credentials{Ufrag: cc.Username, Password: cc.Password},
		Role:   node.RoleControlled,
	}
}

func (c testClient) authorize(ref string, r portalapi.Resource, expires time.Time) portalapi.AuthorizeFlow {
	cc, gc := c.creds()
	var exp int64
	if !expires.IsZero() {
		exp = expires.Unix()
	}
	return portalapi.AuthorizeFlow{
		Ref: ref, Resource: r, Client: c.flowClient(), ClientIceCredentials: cc, GatewayIceCredentials: gc, ExpiresAt: exp,
	}
}

// tfatal is what the helpers need of *testing.T and *rapid.T.
type tfatal interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// harness drives a Gateway as tunnel.Driver would.
type harness struct {
	t      testing.TB
	g      *core.Gateway
	reader *sdkmetric.ManualReader
	now    time.Time
}

func newHarness(t testing.TB, cfg core.Config) *harness {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	cfg.MeterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	if cfg.Rand == nil {
		cfg.Rand = rand.NewChaCha8([32]byte{42})
	}
	g, err := core.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, g: g, reader: reader, now: t0}
}

// initGateway sends init and returns the actions it caused.
func (h *harness) initGateway(relays ...portalapi.Relay) []tunnel.Action {
	h.g.HandlePortalState(tunnel.PortalJoined, h.now)
	h.g.HandlePortalMessage(portalapi.GatewayInit{
		Interface: portalapi.Interface{IPv4: gwV4, IPv6: gwV6}, Relays: relays,
	}, h.now)
	return h.settle()
}

// poll drains the actions.
func (h *harness) poll() []tunnel.Action {
	var out []tunnel.Action
	for a, ok := h.g.PollAction(); ok; a, ok = h.g.PollAction() {
		out = append(out, a)
	}
	return out
}

// settle drains the actions (as carried out without failure: a NodeUpsert's Then follows it) and runs the
// timeouts due at h.now, as the driver does, until nothing is left.
func (h *harness) settle() []tunnel.Action {
	var out []tunnel.Action
	for range 8 {
		for _, a := range h.poll() {
			out = append(out, a)
			if up, ok := a.(tunnel.NodeUpsert); ok {
				out = append(out, up.Then...)
			}
		}
		if at, ok := h.g.PollTimeout(); ok && !at.After(h.now) {
			h.g.HandleTimeout(h.now)
			continue
		}
		return out
	}
	h.t.Fatal("core does not settle")
	return nil
}

func (h *harness) msg(m portalapi.Message) []tunnel.Action {
	h.g.HandlePortalMessage(m, h.now)
	return h.settle()
}

// net sends a packet from a client; it returns the verdict and the actions.
func (h *harness) net(pkt []byte) (tunnel.Verdict, []tunnel.Action) {
	v := h.g.HandleNetworkInput(pkt, h.now)
	return v, h.settle()
}

func (h *harness) tun(pkt []byte) (tunnel.Verdict, []tunnel.Action) {
	v := h.g.HandleTunInput(pkt, h.now)
	return v, h.settle()
}

// metrics returns every int64 data point as "name" or "name{value}" of its one attribute.
func (h *harness) metrics() map[string]int64 {
	h.t.Helper()
	var rm metricdata.ResourceMetrics
	if err := h.reader.Collect(context.Background(), &rm); err != nil {
		h.t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			var pts []metricdata.DataPoint[int64]
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				pts = d.DataPoints
			case metricdata.Gauge[int64]:
				pts = d.DataPoints
			}
			for _, p := range pts {
				name := m.Name
				for _, kv := range p.Attributes.ToSlice() {
					name += "{" + kv.Value.AsString() + "}"
				}
				out[name] = p.Value
			}
		}
	}
	return out
}

func (h *harness) metric(name string) int64 { h.t.Helper(); return h.metrics()[name] }

// ofKind returns the actions of type T.
func ofKind[T tunnel.Action](as []tunnel.Action) []T {
	var out []T
	for _, a := range as {
		if t, ok := a.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

// pushes returns the portal pushes of event ev.
func pushes(as []tunnel.Action, ev string) []any {
	var out []any
	for _, p := range ofKind[tunnel.PortalPush](as) {
		if p.Event == ev {
			out = append(out, p.Payload)
		}
	}
	return out
}

// tunnelPackets returns every packet of the SendToTunnel actions.
func tunnelPackets(as []tunnel.Action) [][]byte {
	var out [][]byte
	for _, s := range ofKind[tunnel.SendToTunnel](as) {
		out = append(out, s.Packets...)
	}
	return out
}

// Packets are built and checked with gVisor's tcpip/header, independently of ippacket.

func gaddr(a netip.Addr) tcpip.Address { return tcpip.AddrFromSlice(a.AsSlice()) }

func ipWrap(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	if src.Is4() {
		b := make([]byte, header.IPv4MinimumSize+len(l4))
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)), ID: 0x4242, TTL: 64, Protocol: proto,
			SrcAddr: gaddr(src), DstAddr: gaddr(dst),
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		copy(b[header.IPv4MinimumSize:], l4)
		return b
	}
	b := make([]byte, header.IPv6MinimumSize+len(l4))
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength: uint16(len(l4)), TransportProtocol: tcpip.TransportProtocolNumber(proto),
		HopLimit: 64, SrcAddr: gaddr(src), DstAddr: gaddr(dst),
	})
	copy(b[header.IPv6MinimumSize:], l4)
	return b
}

func udpPkt(src, dst netip.AddrPort, payload []byte) []byte {
	u := make([]byte, header.UDPMinimumSize+len(payload))
	header.UDP(u).Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(u))})
	copy(u[header.UDPMinimumSize:], payload)
	x := header.PseudoHeaderChecksum(header.UDPProtocolNumber, gaddr(src.Addr()), gaddr(dst.Addr()), uint16(len(u)))
	x = checksum.Checksum(payload, x)
	s := ^header.UDP(u).CalculateChecksum(x)
	if s == 0 {
		s = 0xFFFF
	}
	header.UDP(u).SetChecksum(s)
	return ipWrap(src.Addr(), dst.Addr(), uint8(ippacket.ProtoUDP), u)
}

func tcpPkt(src, dst netip.AddrPort, flags header.TCPFlags, payload []byte) []byte {
	t := make([]byte, header.TCPMinimumSize+len(payload))
	header.TCP(t).Encode(&header.TCPFields{
		SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: 1000, AckNum: 2000,
		DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 4096,
	})
	copy(t[header.TCPMinimumSize:], payload)
	x := header.PseudoHeaderChecksum(header.TCPProtocolNumber, gaddr(src.Addr()), gaddr(dst.Addr()), uint16(len(t)))
	x = checksum.Checksum(payload, x)
	header.TCP(t).SetChecksum(^header.TCP(t).CalculateChecksum(x))
	return ipWrap(src.Addr(), dst.Addr(), uint8(ippacket.ProtoTCP), t)
}

// icmpPkt builds an ICMP (IPv4) or ICMPv6 message: type, code, the 4 bytes after the checksum, a body.
func icmpPkt(src, dst netip.Addr, typ, code uint8, rest uint32, body []byte) []byte {
	m := make([]byte, 8+len(body))
	m[0], m[1] = typ, code
	binary.BigEndian.PutUint32(m[4:8], rest)
	copy(m[8:], body)
	if src.Is4() {
		header.ICMPv4(m).SetChecksum(^checksum.Checksum(m, 0))
		return ipWrap(src, dst, uint8(ippacket.ProtoICMP), m)
	}
	header.ICMPv6(m).SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header: m, Src: gaddr(src), Dst: gaddr(dst),
	}))
	return ipWrap(src, dst, uint8(ippacket.ProtoICMPv6), m)
}

// echo builds an echo request (reply when reply is set) with id.
func echo(src, dst netip.Addr, id uint16, reply bool) []byte {
	typ := uint8(8)
	if src.Is6() {
		typ = 128
	}
	if reply {
		typ = map[uint8]uint8{8: 0, 128: 129}[typ]
	}
	return icmpPkt(src, dst, typ, 0, uint32(id)<<16|1, []byte("ping"))
}

// pktInfo is what a packet says, read with gVisor, with its checksums verified.
type pktInfo struct {
	src, dst         netip.Addr
	proto            uint8
	sport, dport     uint16 // TCP/UDP ports; for ICMP: type, code
	echoID           uint16
	checksumsOK      bool
	icmpType, icmpCo uint8
}

func addrOf(a tcpip.Address) netip.Addr { ad, _ := netip.AddrFromSlice(a.AsSlice()); return ad }

// inspect parses pkt with gVisor and checks every checksum it carries.
func inspect(t tfatal, pkt []byte) pktInfo {
	t.Helper()
	var info pktInfo
	var l4 []byte
	var src, dst tcpip.Address
	switch pkt[0] >> 4 {
	case 4:
		ip := header.IPv4(pkt)
		if !ip.IsValid(len(pkt)) {
			t.Fatalf("invalid IPv4 packet % x", pkt)
		}
		info.checksumsOK = ip.IsChecksumValid()
		src, dst, info.proto = ip.SourceAddress(), ip.DestinationAddress(), ip.Protocol()
		l4 = ip.Payload()
	case 6:
		ip := header.IPv6(pkt)
		if !ip.IsValid(len(pkt)) {
			t.Fatalf("invalid IPv6 packet % x", pkt)
		}
		info.checksumsOK = true
		src, dst, info.proto = ip.SourceAddress(), ip.DestinationAddress(), uint8(ip.TransportProtocol())
		l4 = ip.Payload()
	default:
		t.Fatalf("not an IP packet % x", pkt)
	}
	info.src, info.dst = addrOf(src), addrOf(dst)
	switch info.proto {
	case uint8(header.UDPProtocolNumber):
		u := header.UDP(l4)
		info.sport, info.dport = u.SourcePort(), u.DestinationPort()
		info.checksumsOK = info.checksumsOK && u.IsChecksumValid(src, dst, checksum.Checksum(u.Payload(), 0))
	case uint8(header.TCPProtocolNumber):
		tc := header.TCP(l4)
		info.sport, info.dport = tc.SourcePort(), tc.DestinationPort()
		info.checksumsOK = info.checksumsOK && tc.IsChecksumValid(src, dst, checksum.Checksum(tc.Payload(), 0), uint16(len(tc.Payload())))
	case uint8(header.ICMPv4ProtocolNumber):
		m := header.ICMPv4(l4)
		info.icmpType, info.icmpCo = uint8(m.Type()), uint8(m.Code())
		info.echoID = m.Ident()
		info.checksumsOK = info.checksumsOK && checksum.Checksum(l4, 0) == 0xFFFF
	case uint8(header.ICMPv6ProtocolNumber):
		m := header.ICMPv6(l4)
		info.icmpType, info.icmpCo = uint8(m.Type()), uint8(m.Code())
		info.echoID = m.Ident()
		info.checksumsOK = info.checksumsOK && header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
			Header: m, Src: src, Dst: dst,
		}) == m.Checksum()
	}
	return info
}

// isProhibited reports whether info is an ICMP(v6) administratively prohibited error.
func (i pktInfo) isProhibited() bool {
	return (i.proto == 1 && i.icmpType == 3 && i.icmpCo == 13) || (i.proto == 58 && i.icmpType == 1 && i.icmpCo == 1)
}

// isUnreachable reports whether info is an ICMP network unreachable / ICMPv6 no route.
func (i pktInfo) isUnreachable() bool {
	return (i.proto == 1 && i.icmpType == 3 && i.icmpCo == 0) || (i.proto == 58 && i.icmpType == 1 && i.icmpCo == 0)
}

// control builds a control packet from a client to the gateway.
func control(t tfatal, src netip.Addr, m p2pcontrol.Message) []byte {
	t.Helper()
	pkt, err := p2pcontrol.Encode(src, gwV6, m)
	if err != nil {
		t.Fatal(err)
	}
	return pkt
}

// domainStatuses decodes the DomainStatus packets among pkts, by destination.
func domainStatuses(t tfatal, pkts [][]byte) map[netip.Addr][]p2pcontrol.DomainStatus {
	t.Helper()
	out := map[netip.Addr][]p2pcontrol.DomainStatus{}
	for _, pkt := range pkts {
		if !p2pcontrol.IsControl(pkt) {
			continue
		}
		p, err := p2pcontrol.Decode(pkt)
		if err != nil {
			t.Fatal(err)
		}
		if p.Src != gwV6 {
			t.Fatalf("control packet from %v, want the gateway's %v", p.Src, gwV6)
		}
		if ds, ok := p.Msg.(p2pcontrol.DomainStatus); ok {
			out[p.Dst] = append(out[p.Dst], ds)
		}
	}
	return out
}

// goodbyes returns the destinations of the Goodbye packets among pkts.
func goodbyes(t tfatal, pkts [][]byte) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for _, pkt := range pkts {
		if !p2pcontrol.IsControl(pkt) {
			continue
		}
		p, err := p2pcontrol.Decode(pkt)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := p.Msg.(p2pcontrol.Goodbye); ok {
			out = append(out, p.Dst)
		}
	}
	return out
}

func proxies4(base byte) []netip.Addr {
	return []netip.Addr{
		netip.AddrFrom4([4]byte{100, 96, 0, base}), netip.AddrFrom4([4]byte{100, 96, 0, base + 1}),
		netip.AddrFrom4([4]byte{100, 96, 0, base + 2}), netip.AddrFrom4([4]byte{100, 96, 0, base + 3}),
	}
}

func proxies8(base byte) []netip.Addr {
	out := proxies4(base)
	for i := range 4 {
		out = append(out, netip.MustParseAddr(fmt.Sprintf("fd00:2021:1111:8000::%x", int(base)+i)))
	}
	return out
}
