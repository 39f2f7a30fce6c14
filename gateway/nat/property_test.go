package nat_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/snowgate/snowgate/gateway/nat"
	"github.com/snowgate/snowgate/internal/ippacket"
	ipt "github.com/snowgate/snowgate/internal/ippacket/ippackettest"
)

// mkey is a model flow key: (kind index, port, address).
type mkey struct {
	kind int
	port uint16
	addr netip.Addr
}

type mflow struct {
	client          int
	inside, outside mkey
	lastOut, lastIn time.Time
	pkt             []byte // last translated outgoing packet
}

func (f *mflow) removeAt() time.Time {
	last := f.lastOut
	if f.lastIn.After(last) {
		last = f.lastIn
	}
	ttl := nat.UDPTTL
	switch kinds[f.inside.kind].name {
	case "tcp":
		ttl = nat.TCPTTL
	case "echo":
		ttl = nat.ICMPTTL
	}
	at := last.Add(ttl)
	if f.lastIn.IsZero() && f.lastOut.Add(nat.UnconfirmedTTL).Before(at) {
		at = f.lastOut.Add(nat.UnconfirmedTTL)
	}
	return at
}

type natModel struct {
	tb      *nat.Table
	now     time.Time
	max     int
	clients []nat.ClientIPs
	domains map[string][]netip.Addr     // domain → its proxy IPs (same for every client)
	owner   []map[netip.Addr]string     // per client: proxy → owning domain name
	mapping []map[netip.Addr]netip.Addr // per client: proxy → real (zero: none)
	flows   []map[mkey]*mflow           // per client: live-or-dead flows by inside key
	history []*mflow                    // every flow ever, for replies
}

var (
	mProxies = []netip.Addr{
		netip.MustParseAddr("100.96.0.1"), netip.MustParseAddr("100.96.0.2"),
		netip.MustParseAddr("fd00:2021:1111:8000::1"), netip.MustParseAddr("fd00:2021:1111:8000::2"),
		netip.MustParseAddr("100.96.0.3"), netip.MustParseAddr("100.96.0.4"),
		netip.MustParseAddr("fd00:2021:1111:8000::3"), netip.MustParseAddr("fd00:2021:1111:8000::4"),
		netip.MustParseAddr("100.96.0.9"), // never assigned
	}
	// Few real IPs, so that proxy IPs of both domains share them.
	mReals4 = []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")}
	mReals6 = []netip.Addr{netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")}
	mPorts  = []uint16{0, 1000, 1001, 65535}
)

func (m *natModel) clientAddr(ci int, fam netip.Addr) netip.Addr {
	if fam.Is4() {
		return m.clients[ci].V4
	}
	return m.clients[ci].V6
}

func (m *natModel) live(f *mflow) bool { return f != nil && m.now.Before(f.removeAt()) }

func (m *natModel) liveCount(ci int) int {
	n := 0
	for _, f := range m.flows[ci] {
		if m.live(f) {
			n++
		}
	}
	return n
}

func (m *natModel) liveByOutside(ci int, out mkey) *mflow {
	for _, f := range m.flows[ci] {
		if f.outside == out && m.live(f) {
			return f
		}
	}
	return nil
}

// drawReals draws a domain's real IPs: usually some of each family,
// sometimes none of one.
func drawReals(t *rapid.T) []netip.Addr {
	var reals []netip.Addr
	for _, pool := range [][]netip.Addr{mReals4, mReals6} {
		if rapid.IntRange(0, 9).Draw(t, "family empty") == 0 {
			continue
		}
		reals = append(reals, rapid.SliceOfNDistinct(rapid.SampledFrom(pool), 1, len(pool), netip.Addr.String).Draw(t, "reals")...)
	}
	return reals
}

func (m *natModel) configure(t *rapid.T) {
	ci := rapid.IntRange(0, len(m.clients)-1).Draw(t, "client")
	d := rapid.SampledFrom([]string{"a", "b"}).Draw(t, "domain")
	name := d + rapid.SampledFrom([]string{"", "-renumbered"}).Draw(t, "variant")
	m.apply(t, ci, d, name, drawReals(t))
}

func (m *natModel) apply(t *rapid.T, ci int, d, name string, reals []netip.Addr) {
	setup, err := m.tb.Configure(m.clients[ci].V6, nat.Assignment{Resource: "r", Domain: name, ProxyIPs: m.domains[d], RealIPs: reals}, m.now)
	if err != nil {
		t.Fatal(err)
	}
	if len(setup.Mappings) != len(m.domains[d]) {
		t.Fatalf("mappings %v", setup.Mappings)
	}
	for _, mp := range setup.Mappings {
		hasFam := slices.ContainsFunc(reals, func(r netip.Addr) bool { return r.Is4() == mp.Proxy.Is4() })
		if mp.Real.IsValid() != hasFam || (mp.Real.IsValid() && (!slices.Contains(reals, mp.Real) || mp.Real.Is4() != mp.Proxy.Is4())) {
			t.Fatalf("mapping %v for reals %v", mp, reals)
		}
		if old, ok := m.owner[ci][mp.Proxy]; ok && old != name {
			for k := range m.flows[ci] {
				if k.addr == mp.Proxy {
					delete(m.flows[ci], k)
				}
			}
		}
		m.owner[ci][mp.Proxy] = name
		m.mapping[ci][mp.Proxy] = mp.Real
	}
}

func (m *natModel) send(t *rapid.T) {
	ci := rapid.IntRange(0, len(m.clients)-1).Draw(t, "client")
	proxy := rapid.SampledFrom(mProxies).Draw(t, "proxy")
	ki := rapid.IntRange(0, len(kinds)-1).Draw(t, "kind")
	port := rapid.SampledFrom(mPorts).Draw(t, "port")
	cl := m.clientAddr(ci, proxy)
	pkt := kinds[ki].out(cl, proxy, port)
	v, err := m.tb.TranslateOutgoing(pkt, m.now)

	in := mkey{ki, port, proxy}
	f := m.flows[ci][in]
	if !m.live(f) {
		delete(m.flows[ci], in)
		f = nil
	}
	real, assigned := m.mapping[ci][proxy]
	switch {
	case f != nil:
	case !assigned:
		if v != nat.Unreachable || !errors.Is(err, nat.ErrNoTranslation) {
			t.Fatalf("unassigned %v: %v %v", proxy, v, err)
		}
		return
	case !real.IsValid():
		if v != nat.Unreachable || !errors.Is(err, nat.ErrNoRealIP) {
			t.Fatalf("no real IP for %v: %v %v", proxy, v, err)
		}
		return
	case m.liveCount(ci) >= m.max:
		if v != nat.Drop || !errors.Is(err, nat.ErrTableFull) {
			t.Fatalf("full table: %v %v", v, err)
		}
		return
	}
	if v != nat.Translated {
		t.Fatalf("send %v: %v %v", in, v, err)
	}
	if err := ipt.Verify(pkt); err != nil {
		t.Fatalf("outgoing checksums: %v", err)
	}
	src, dst, sport, _ := flowID(pkt)
	out := mkey{ki, sport, dst}
	if src != cl {
		t.Fatalf("source changed to %v", src)
	}
	if f != nil {
		if out != f.outside {
			t.Fatalf("live flow %v moved from %v to %v", in, f.outside, out)
		}
	} else {
		if dst != real {
			t.Fatalf("new flow %v to %v, mapping says %v", in, dst, real)
		}
		if m.liveByOutside(ci, out) != nil {
			t.Fatalf("new flow %v took live outside %v", in, out)
		}
		if m.liveByOutside(ci, mkey{ki, port, real}) == nil && sport != port {
			t.Fatalf("port %d free but rewritten to %d", port, sport)
		}
		f = &mflow{client: ci, inside: in, outside: out}
		m.flows[ci][in] = f
		m.history = append(m.history, f)
	}
	f.lastOut = m.now
	f.pkt = pkt
}

func (m *natModel) reply(t *rapid.T) {
	if len(m.history) == 0 {
		t.Skip("no flow yet")
	}
	h := rapid.SampledFrom(m.history).Draw(t, "flow")
	ci := rapid.IntRange(0, len(m.clients)-1).Draw(t, "to client")
	asError := rapid.Bool().Draw(t, "icmp error")
	cl := m.clientAddr(ci, h.outside.addr)
	var pkt []byte
	if asError {
		q := append([]byte(nil), h.pkt...)
		if h.client != ci { // quote as if sent by the other client
			p, _ := ippacket.Parse(q)
			_ = p.SetSrc(cl)
		}
		router := router4
		if cl.Is6() {
			router = router6
		}
		pkt = ipt.Unreachable(router, cl, q)
	} else {
		pkt = kinds[h.outside.kind].reply(h.outside.addr, cl, h.outside.port)
	}
	v, err := m.tb.TranslateIncoming(pkt, m.now)
	f := m.liveByOutside(ci, h.outside)
	if f == nil {
		if v == nat.Translated {
			t.Fatalf("reply for dead outside %v translated", h.outside)
		}
		return
	}
	if v != nat.Translated {
		t.Fatalf("reply for live flow %v→%v: %v %v", f.inside, f.outside, v, err)
	}
	if err := ipt.Verify(pkt); err != nil {
		t.Fatalf("incoming checksums: %v", err)
	}
	p, _ := ippacket.Parse(pkt)
	if asError {
		q, err := p.Quoted()
		if err != nil {
			t.Fatal(err)
		}
		_, qdst, qport, _ := flowID(q.Bytes())
		if p.Src() != f.inside.addr || qdst != f.inside.addr || qport != f.inside.port {
			t.Fatalf("icmp error from %v quoting →%v:%d, want %v/%v:%d", p.Src(), qdst, qport, f.inside.addr, f.inside.addr, f.inside.port)
		}
	} else {
		src, dst, _, dport := flowID(pkt)
		if src != f.inside.addr || dst != cl || dport != f.inside.port {
			t.Fatalf("reply %v→%v:%d, want %v→%v:%d", src, dst, dport, f.inside.addr, cl, f.inside.port)
		}
	}
	f.lastIn = m.now
}

func (m *natModel) advance(t *rapid.T) {
	dt := rapid.SampledFrom([]time.Duration{0, time.Second, 30 * time.Second, 59 * time.Second,
		61 * time.Second, 2 * time.Minute, time.Hour, nat.TCPTTL}).Draw(t, "dt")
	m.now = m.now.Add(dt)
	m.tb.HandleTimeout(m.now)
	total := 0
	var first time.Time
	for ci := range m.clients {
		n := m.liveCount(ci)
		if n > m.max {
			t.Fatalf("model over limit")
		}
		total += n
		for _, f := range m.flows[ci] {
			if m.live(f) && (first.IsZero() || f.removeAt().Before(first)) {
				first = f.removeAt()
			}
		}
	}
	if s := m.tb.Stats(); s.Sessions != total {
		t.Fatalf("table has %d sessions, model %d live", s.Sessions, total)
	}
	if total > 0 {
		at, ok := m.tb.PollTimeout()
		if !ok || !at.After(m.now) || at.After(first) {
			t.Fatalf("PollTimeout = %v %v; now %v, first expiry %v", at, ok, m.now, first)
		}
	}
}

func (m *natModel) readdClient(t *rapid.T) {
	ci := rapid.IntRange(0, len(m.clients)-1).Draw(t, "client")
	m.tb.RemoveClient(m.clients[ci].V4)
	if err := m.tb.AddClient(m.clients[ci]); err != nil {
		t.Fatal(err)
	}
	m.owner[ci] = map[netip.Addr]string{}
	m.mapping[ci] = map[netip.Addr]netip.Addr{}
	m.flows[ci] = map[mkey]*mflow{}
}

func TestStateMachine(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		max := rapid.IntRange(1, 12).Draw(t, "max sessions")
		tb, err := nat.New(nat.Config{MaxSessionsPerClient: max})
		if err != nil {
			t.Fatal(err)
		}
		m := &natModel{tb: tb, now: t0, max: max, domains: map[string][]netip.Addr{
			"a": mProxies[0:4], "b": mProxies[4:8],
		}}
		for i := range 2 {
			ips := nat.ClientIPs{
				V4: netip.MustParseAddr(fmt.Sprintf("100.64.0.%d", i+1)),
				V6: netip.MustParseAddr(fmt.Sprintf("fd00:2021:1111::%d", i+1)),
			}
			if err := tb.AddClient(ips); err != nil {
				t.Fatal(err)
			}
			m.clients = append(m.clients, ips)
			m.owner = append(m.owner, map[netip.Addr]string{})
			m.mapping = append(m.mapping, map[netip.Addr]netip.Addr{})
			m.flows = append(m.flows, map[mkey]*mflow{})
		}
		for ci := range m.clients {
			for _, d := range []string{"a", "b"} {
				m.apply(t, ci, d, d, drawReals(t))
			}
		}
		t.Repeat(map[string]func(*rapid.T){
			"configure":  m.configure,
			"send":       m.send,
			"send more":  m.send,
			"reply more": m.reply,
			"reply":      m.reply,
			"advance":    m.advance,
			"readd":      m.readdClient,
			"": func(t *rapid.T) {
				for ci := range m.clients {
					if m.liveCount(ci) > m.max {
						t.Fatal("over limit")
					}
				}
			},
		})
	})
}
