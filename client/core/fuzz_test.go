package core

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
)

// Fuzz operations: the first byte of each op selects it; variable-length operands are a 2-byte length and
// the bytes.
const (
	opPortal       = iota // event index, payload: a portal message decoded with portalapi.DecodeClientIngress
	opTun                 // packet from the TUN device
	opNetwork             // packet from a gateway
	opNodeEvent           // kind, gateway index
	opAdvance             // n × 100 ms
	opDNSResponse         // forward index, payload
	opRoam                //
	opFailUpsert          // the next new connection fails for lack of relays
	opPortalState         // state
	opInit                // flags: a ready-made init (cidr, dns, internet resources)
	opFlowCreated         // resource index, gateway index
	opDNSQuery            // name index, type: a UDP query to the sentinel
	opDomainStatus        // gateway index, name index, active
	numOps
)

var fuzzEvents = []string{
	portalapi.EventInit, portalapi.EventConfigChanged, portalapi.EventResourceCreatedOrUpdated,
	portalapi.EventResourceDeleted, portalapi.EventRelaysPresence, portalapi.EventFlowCreated,
	portalapi.EventFlowCreationFailed, portalapi.EventIceCandidates, portalapi.EventInvalidateIceCandidates,
}

var fuzzNames = []string{"a.corp.test", "b.corp.test", "x.y.corp.test", "example.org"}

// fuzzOps builds fuzz input from ops (for seeds).
type fuzzOps []byte

func (b fuzzOps) op(op byte, args ...byte) fuzzOps { return append(append(b, op), args...) }

func (b fuzzOps) blob(op byte, head []byte, data []byte) fuzzOps {
	b = append(append(b, op), head...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	return append(b, data...)
}

func (b fuzzOps) portal(event int, payload any) fuzzOps {
	j, _ := json.Marshal(payload)
	return b.blob(opPortal, []byte{byte(event)}, j)
}

type fuzzReader struct {
	b []byte
}

func (r *fuzzReader) byte() (byte, bool) {
	if len(r.b) == 0 {
		return 0, false
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v, true
}

func (r *fuzzReader) blob() ([]byte, bool) {
	if len(r.b) < 2 {
		return nil, false
	}
	n := int(binary.BigEndian.Uint16(r.b))
	r.b = r.b[2:]
	n = min(n, len(r.b))
	v := r.b[:n]
	r.b = r.b[n:]
	return v, true
}

func fuzzInit(flags byte) portalapi.ClientInit {
	rs := []portalapi.Resource{cidrRes(rid(1), "198.51.100.0/24"), dnsRes(rid(2), "*.corp.test")}
	if flags&1 != 0 {
		rs = append(rs, internetRes(rid(3)))
	}
	if flags&2 != 0 {
		rs = append(rs, cidrRes(rid(4), "198.51.100.0/26", portalapi.Filter{Protocol: portalapi.ProtocolTCP, PortRangeStart: 443, PortRangeEnd: 443}))
	}
	return initMsg(rs...)
}

// checkDelivered checks the property: whatever reached wireguard-go goes to an established gateway, and
// its destination is covered by a resource the core has (or is a gateway's tunnel address).
func checkDelivered(t *testing.T, h *harness, ds []delivered) {
	t.Helper()
	if len(ds) == 0 {
		return
	}
	st := h.c.Status(h.now)
	for _, d := range ds {
		p, err := ippacket.Parse(d.pkt)
		if err != nil {
			t.Fatalf("unparsable packet reached the tunnel: %v", err)
		}
		dst := p.Dst()
		if d.gw == "" || !h.established[d.gw] {
			t.Fatalf("packet to %v sent to gateway %q, not an established connection", dst, d.gw)
		}
		if d.control {
			continue
		}
		if !covered(st, dst) {
			t.Fatalf("packet to %v reached the tunnel but no resource covers it (status %+v)", dst, st.Resources)
		}
	}
	if len(h.ambiguous) > 0 {
		t.Fatalf("ambiguous AllowedIPs for %v", h.ambiguous)
	}
}

func covered(st Status, dst netip.Addr) bool {
	for _, g := range st.Gateways {
		if g.IPv4 == dst || g.IPv6 == dst {
			return true
		}
	}
	isDNS := map[string]bool{}
	internet := false
	for _, r := range st.Resources {
		switch portalapi.ResourceType(r.Type) {
		case portalapi.ResourceCIDR:
			if p, err := netip.ParsePrefix(r.Address); err == nil && p.Contains(dst) {
				return true
			}
		case portalapi.ResourceDNS:
			isDNS[r.ID] = true
		case portalapi.ResourceInternet:
			internet = true
		}
	}
	for _, n := range st.DNS.Names {
		if isDNS[n.ResourceID] && slices.Contains(n.ProxyIPs, dst) {
			return true
		}
	}
	return internet && !inReserved(dst)
}

func FuzzClient(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h := newHarness(t, Config{})
		r := &fuzzReader{b: data}
		var lastUpsert *tunnel.NodeUpsert
		for steps := 0; steps < 200; steps++ {
			op, ok := r.byte()
			if !ok {
				break
			}
			mark := len(h.out)
			switch op % numOps {
			case opPortal:
				ev, _ := r.byte()
				payload, _ := r.blob()
				msg, err := portalapi.DecodeClientIngress(fuzzEvents[int(ev)%len(fuzzEvents)], payload)
				if err != nil {
					continue
				}
				h.portal(msg)
			case opTun:
				pkt, _ := r.blob()
				h.tunIn(slices.Clone(pkt))
			case opNetwork:
				pkt, _ := r.blob()
				h.c.HandleNetworkInput(slices.Clone(pkt), h.now)
				h.run()
			case opNodeEvent:
				k, _ := r.byte()
				g, _ := r.byte()
				id := gw(int(g%3) + 1).id
				ev := node.Event{Kind: node.EventKind(k%6 + 1), ConnectionID: id, Candidate: "candidate " + strconv.Itoa(int(k))}
				if ev.Kind == node.EventConnectionEstablished {
					h.establish(id)
				} else {
					h.nodeEvent(ev)
				}
			case opAdvance:
				n, _ := r.byte()
				h.advance(time.Duration(n) * 100 * time.Millisecond)
			case opDNSResponse:
				i, _ := r.byte()
				payload, _ := r.blob()
				if len(h.forwards) == 0 {
					continue
				}
				fw := h.forwards[int(i)%len(h.forwards)]
				var err error
				if len(payload) == 0 {
					err = errors.New("refused")
				}
				h.c.HandleDNSResponse(fw.ID, slices.Clone(payload), err, h.now)
				h.run()
			case opRoam:
				h.c.HandleRoam(h.now)
				h.run()
			case opFailUpsert:
				h.failUpsert = node.ErrNoRelays
				if lastUpsert != nil {
					h.c.HandleActionFailed(*lastUpsert, node.ErrNoRelays, h.now)
					h.run()
				}
			case opPortalState:
				s, _ := r.byte()
				h.c.HandlePortalState(tunnel.PortalState(s%3), h.now)
				h.run()
			case opInit:
				fl, _ := r.byte()
				h.portal(fuzzInit(fl))
			case opFlowCreated:
				res, _ := r.byte()
				g, _ := r.byte()
				h.portal(gw(int(g%3) + 1).flowCreated(rid(int(res%4) + 1)))
			case opDNSQuery:
				n, _ := r.byte()
				qt, _ := r.byte()
				typ := mdns.TypeA
				if qt%2 == 1 {
					typ = mdns.TypeAAAA
				}
				h.tunIn(udpQueryPacket(t, clientV4, sentV4, fuzzNames[int(n)%len(fuzzNames)], typ, uint16(steps)))
			case opDomainStatus:
				g, _ := r.byte()
				n, _ := r.byte()
				act, _ := r.byte()
				pkt, err := p2pcontrol.Encode(gw(int(g%3)+1).ipv6, clientV6, p2pcontrol.DomainStatus{
					Resource: rid(2), Domain: fuzzNames[int(n)%len(fuzzNames)], Status: p2pcontrol.NatStatus(act % 2)})
				if err == nil {
					h.c.HandleNetworkInput(pkt, h.now)
					h.run()
				}
			}
			for _, a := range h.actions {
				if u, ok := a.(tunnel.NodeUpsert); ok {
					lastUpsert = &u
				}
			}
			h.actions = h.actions[:0]
			checkDelivered(t, h, h.out[mark:])
			if _, ok := h.c.PollTimeout(); ok {
				dl, _ := h.c.PollTimeout()
				if dl.Before(h.now.Add(-time.Hour)) {
					t.Fatalf("deadline %v far in the past", dl)
				}
			}
		}
		// Status must always encode.
		if _, err := json.Marshal(h.c.Status(h.now)); err != nil {
			t.Fatalf("status: %v", err)
		}
	})
}

// fuzzSeeds are the committed seeds (also written to testdata/fuzz/FuzzClient by TestWriteFuzzCorpus).
func fuzzSeeds() []string {
	lanPkt := packet(clientV4, lan, ippacket.ProtoTCP, 443, 1)
	lanUDP := packet(clientV4, lan, ippacket.ProtoUDP, 53, 2)
	pub := packet(clientV4, netip.MustParseAddr("198.18.7.7"), ippacket.ProtoTCP, 443, 3)
	proxy := packet(clientV4, netip.MustParseAddr("100.96.0.1"), ippacket.ProtoTCP, 443, 4)
	tcpSentinel := packet(clientV4, sentV4, ippacket.ProtoTCP, 53, 5)
	bye, _ := p2pcontrol.Encode(gw(1).ipv6, clientV6, p2pcontrol.Goodbye{})
	var seeds []string
	add := func(b fuzzOps) { seeds = append(seeds, string(b)) }
	// A flow: init, packet, flow_created, established, packets.
	add(fuzzOps{}.op(opInit, 0).blob(opTun, nil, lanPkt).op(opFlowCreated, 0, 0).op(opNodeEvent, 2, 0).
		blob(opTun, nil, lanPkt).blob(opTun, nil, lanUDP))
	// The Internet resource, overlapping filtered CIDR, roam and portal reconnect.
	add(fuzzOps{}.op(opInit, 3).blob(opTun, nil, pub).blob(opTun, nil, lanUDP).op(opFlowCreated, 2, 1).
		op(opNodeEvent, 2, 1).op(opRoam).op(opPortalState, 1).op(opInit, 3).blob(opTun, nil, pub).op(opAdvance, 30))
	// DNS: a resource name, a packet to its proxy IP, its NAT, a forwarded query and its answer.
	add(fuzzOps{}.op(opInit, 0).op(opDNSQuery, 0, 0).blob(opTun, nil, proxy).op(opFlowCreated, 1, 0).
		op(opNodeEvent, 2, 0).op(opDomainStatus, 0, 0, 1).op(opDNSQuery, 3, 0).blob(opDNSResponse, []byte{0}, nil).
		blob(opTun, nil, tcpSentinel))
	// Relay loss, connection failure, goodbye.
	add(fuzzOps{}.op(opInit, 0).blob(opTun, nil, lanPkt).op(opFailUpsert).op(opFlowCreated, 0, 0).op(opAdvance, 10).
		op(opInit, 0).op(opFlowCreated, 0, 0).op(opNodeEvent, 3, 0).blob(opTun, nil, lanPkt).op(opFlowCreated, 0, 1).
		op(opNodeEvent, 2, 1).blob(opNetwork, nil, bye).op(opNodeEvent, 4, 0))
	// Raw portal messages.
	add(fuzzOps{}.portal(0, initMsg(cidrRes(rid(1), "2001:db8:1::/48"))).
		portal(2, dnsRes(rid(2), "**.corp.test")).
		portal(4, portalapi.RelaysPresence{DisconnectedIDs: []string{"relay-1"}}).
		portal(1, portalapi.ConfigChanged{Interface: portalapi.Interface{IPv4: clientV4, IPv6: clientV6,
			UpstreamDo53: []portalapi.Do53{{IP: netip.MustParseAddr("203.0.113.53")}}}}).
		portal(6, portalapi.FlowCreationFailed{ResourceID: rid(1), Reason: portalapi.FailForbidden}).
		portal(3, rid(2)).
		portal(7, portalapi.GatewayIceCandidates{GatewayID: "gw-1", Candidates: []string{"x"}}))
	return seeds
}

// TestWriteFuzzCorpus writes the seeds to testdata/fuzz/FuzzClient when SNOWGATE_WRITE_CORPUS=1 (they are
// committed; run it after changing fuzzSeeds).
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("SNOWGATE_WRITE_CORPUS") != "1" {
		t.Skip("set SNOWGATE_WRITE_CORPUS=1 to rewrite testdata/fuzz/FuzzClient")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzClient")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range fuzzSeeds() {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(s))
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%d", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
