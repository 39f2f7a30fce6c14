package dns

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"
	"github.com/snowgate/snowgate/internal/dnspattern"
	"pgregory.net/rapid"
)

var labelGen = rapid.StringMatching(`[a-z0-9]{1,8}`)

// TestPropTruncation: for any upstream answer size and any EDNS0 size, a UDP reply stays within
// min(1212, max(512, EDNS size)), keeps the question, and has TC set iff it had to be cut.
func TestPropTruncation(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		r := newTestResolver(t)
		q := new(mdns.Msg)
		q.SetQuestion("big.example.org.", mdns.TypeTXT)
		q.Id = rapid.Uint16().Draw(t, "id")
		edns := rapid.IntRange(-1, 65535).Draw(t, "edns")
		if edns >= 0 {
			q.SetEdns0(uint16(edns), false)
		}
		qb, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		r.HandleQuery(udpSrc(sent1), qb, t0, nil)
		f, _ := r.PollForward()
		resp := new(mdns.Msg)
		_ = resp.Unpack(qb)
		resp.Response = true
		resp.Compress = rapid.Bool().Draw(t, "compress")
		n := rapid.IntRange(0, 300).Draw(t, "records")
		size := rapid.IntRange(0, 255).Draw(t, "size")
		for i := 0; i < n; i++ {
			resp.Answer = append(resp.Answer, &mdns.TXT{Hdr: mdns.RR_Header{Name: "big.example.org.", Rrtype: mdns.TypeTXT, Class: 1, Ttl: 5},
				Txt: []string{strings.Repeat("x", size)}})
		}
		rb, err := resp.Pack()
		if err != nil {
			t.Skip("answer too large to pack")
		}
		r.HandleUpstreamResponse(f.ID, rb, t0)
		rep, ok := r.PollReply()
		if !ok {
			t.Fatal("no reply")
		}
		limit := 512
		if edns >= 512 {
			limit = min(edns, 1212)
		}
		if len(rep.Payload) > limit {
			t.Fatalf("reply %d bytes > limit %d", len(rep.Payload), limit)
		}
		m := unpack(t, rep.Payload)
		if len(m.Question) != 1 || m.Question[0].Name != "big.example.org." || m.Id != q.Id {
			t.Fatalf("question lost: %v", m)
		}
		if len(rb) > limit {
			if !m.Truncated || len(m.Answer) != 0 || len(m.Ns) != 0 || binary.BigEndian.Uint16(rep.Payload[4:]) != 1 {
				t.Fatalf("oversized answer not truncated properly: %v", m)
			}
			// RFC 6891 §7: a truncated answer to a query with an OPT record keeps the upstream's OPT record.
			opt := m.IsEdns0()
			if edns < 0 && (opt != nil || len(m.Extra) != 0) {
				t.Fatalf("truncated answer to a query without EDNS0 has additional records: %v", m)
			}
			if edns >= 0 && (opt == nil || len(m.Extra) != 1 || opt.UDPSize() != resp.IsEdns0().UDPSize()) {
				t.Fatalf("truncated answer lost the OPT record (query EDNS0 size %d): %v", edns, m)
			}
		} else if string(rep.Payload) != string(rb) {
			t.Fatal("answer within limit was modified")
		}
	})
}

// TestPropStableProxyIPs: a name keeps its IPs; different names never share one; all stay in the proxy ranges
// and out of the sentinel ranges.
func TestPropStableProxyIPs(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		r := newTestResolver(t)
		_ = r.SetResources([]Resource{{ID: "r", Address: "**.example.com"}}, nil)
		seen := map[string][]string{}
		owner := map[string]string{}
		for i, steps := 0, rapid.IntRange(1, 60).Draw(t, "steps"); i < steps; i++ {
			name := rapid.SampledFrom([]string{"a", "b", "c", "d", "e", "f"}).Draw(t, "name") + ".example.com"
			qt := rapid.SampledFrom([]uint16{mdns.TypeA, mdns.TypeAAAA}).Draw(t, "qtype")
			b, ok := r.HandleQuery(udpSrc(sent1), query(t, name, qt, uint16(i)), t0, nil)
			if !ok {
				t.Fatal("not answered")
			}
			var ips []string
			for _, rr := range unpack(t, b).Answer {
				var ip netip.Addr
				switch v := rr.(type) {
				case *mdns.A:
					ip, _ = netip.AddrFromSlice(v.A.To4())
				case *mdns.AAAA:
					ip, _ = netip.AddrFromSlice(v.AAAA)
				}
				if !(ProxyRangeV4.Contains(ip) || ProxyRangeV6.Contains(ip)) || SentinelRangeV4.Contains(ip) || SentinelRangeV6.Contains(ip) {
					t.Fatalf("bad proxy IP %v", ip)
				}
				if o, ok := owner[ip.String()]; ok && o != name {
					t.Fatalf("%v shared by %s and %s", ip, o, name)
				}
				owner[ip.String()] = name
				ips = append(ips, ip.String())
			}
			key := fmt.Sprintf("%s %d", name, qt)
			if prev, ok := seen[key]; ok && strings.Join(prev, ",") != strings.Join(ips, ",") {
				t.Fatalf("%s changed IPs: %v → %v", key, prev, ips)
			}
			seen[key] = ips
		}
		// Exactly one event per distinct name.
		n := 0
		for _, ok := r.PollEvent(); ok; _, ok = r.PollEvent() {
			n++
		}
		names := map[string]bool{}
		for k := range seen {
			names[strings.Fields(k)[0]] = true
		}
		if n != len(names) {
			t.Fatalf("%d events for %d names", n, len(names))
		}
	})
}

// TestPropPatternModel checks "**.", "*." and "?." against a simple model over random names.
func TestPropPatternModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		base := labelGen.Draw(t, "b1") + "." + labelGen.Draw(t, "b2")
		labels := rapid.SliceOfN(labelGen, 0, 4).Draw(t, "labels")
		name := strings.Join(append(labels, base), ".")
		if rapid.Bool().Draw(t, "other") {
			name = strings.Join(append(labels, "zz"+base), ".")
		}
		under := name == base || strings.HasSuffix(name, "."+base)
		depth := 0
		if under {
			depth = strings.Count(strings.TrimSuffix(name, base), ".")
		}
		first := strings.SplitN(name, ".", 2)[0]
		check := func(p string, want bool) {
			pat, err := dnspattern.Parse(p)
			if err != nil {
				t.Fatal(err)
			}
			if got := pat.Match(strings.ToUpper(name)); got != want {
				t.Fatalf("%s match %s = %v, want %v", p, name, got, want)
			}
		}
		check("**."+base, under)
		check("*."+base, under && depth == 1)
		check("?."+base, under && depth == 1 && len(first) == 1)
		check(base, name == base)
	})
}

// TestPropTCPBookkeeping is a state machine test of the per-sentinel TCP limit and of roaming, which answers
// every TCP query in flight SERVFAIL, sends every UDP one again, and keeps the connections.
func TestPropTCPBookkeeping(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		r := newTestResolver(t)
		sents := []netip.Addr{sent1, sent2}
		open := map[uint64]netip.Addr{}
		var next uint64
		inflightTCP := map[ForwardID]uint64{}
		inflightUDP := map[ForwardID]bool{}
		count := func(s netip.Addr) int {
			n := 0
			for _, v := range open {
				if v == s {
					n++
				}
			}
			return n
		}
		t.Repeat(map[string]func(*rapid.T){
			"accept": func(t *rapid.T) {
				s := rapid.SampledFrom(sents).Draw(t, "sentinel")
				next++
				err := r.HandleTCPAccept(s, next)
				if count(s) >= MaxTCPConnsPerSentinel {
					if err == nil {
						t.Fatalf("connection %d to %s accepted over the limit", count(s)+1, s)
					}
					return
				}
				if err != nil {
					t.Fatalf("accept: %v", err)
				}
				open[next] = s
			},
			"close": func(t *rapid.T) {
				if len(open) == 0 {
					t.Skip("none open")
				}
				var hs []uint64
				for h := range open {
					hs = append(hs, h)
				}
				h := rapid.SampledFrom(hs).Draw(t, "conn")
				res := r.HandleTCPClose(h)
				delete(open, h)
				var want []ForwardID
				for id, c := range inflightTCP {
					if c == h {
						want = append(want, id)
						delete(inflightTCP, id)
					}
				}
				slices.Sort(want)
				if !slices.Equal(res.Cancelled, want) {
					t.Fatalf("closing connection %d cancelled %v, want its forwards in flight %v", h, res.Cancelled, want)
				}
			},
			"tcp query": func(t *rapid.T) {
				if len(open) == 0 {
					t.Skip("none open")
				}
				var hs []uint64
				for h := range open {
					hs = append(hs, h)
				}
				h := rapid.SampledFrom(hs).Draw(t, "conn")
				src := Source{Transport: TCP, Client: appClient, Server: netip.AddrPortFrom(open[h], 53), Handle: h}
				r.HandleQuery(src, query(t, "x.org", mdns.TypeA, uint16(h)), t0, nil)
				f, ok := r.PollForward()
				if !ok || f.Transport != TCP {
					t.Fatalf("tcp query not forwarded over tcp: %+v", f)
				}
				inflightTCP[f.ID] = h
			},
			"udp query": func(t *rapid.T) {
				r.HandleQuery(udpSrc(sent1), query(t, "y.org", mdns.TypeA, 1), t0, nil)
				f, _ := r.PollForward()
				inflightUDP[f.ID] = true
			},
			"roam": func(t *rapid.T) {
				res := r.Roam(t0)
				if len(res.Cancelled) != len(inflightTCP)+len(inflightUDP) {
					t.Fatalf("cancelled %d, want %d", len(res.Cancelled), len(inflightTCP)+len(inflightUDP))
				}
				// Every TCP query in flight is answered SERVFAIL on its own (still open) connection.
				tcpWant := map[uint64]int{}
				for _, h := range inflightTCP {
					tcpWant[h]++
				}
				for rep, ok := r.PollReply(); ok; rep, ok = r.PollReply() {
					m := unpack(t, rep.Payload)
					if m.Rcode != mdns.RcodeServerFailure || rep.To.Transport != TCP {
						t.Fatalf("unexpected reply after roam: %+v", rep)
					}
					if _, ok := open[rep.To.Handle]; !ok || m.Id != uint16(rep.To.Handle) {
						t.Fatalf("SERVFAIL id %d to connection %d (open: %v)", m.Id, rep.To.Handle, open)
					}
					tcpWant[rep.To.Handle]--
				}
				for h, n := range tcpWant {
					if n != 0 {
						t.Fatalf("connection %d: %d in-flight queries without SERVFAIL", h, n)
					}
				}
				// Every UDP query in flight is forwarded again under a new ID.
				resent := map[ForwardID]bool{}
				for f, ok := r.PollForward(); ok; f, ok = r.PollForward() {
					if f.Transport != UDP || inflightUDP[f.ID] || resent[f.ID] {
						t.Fatalf("forward after roam %+v (UDP in flight before: %v)", f, inflightUDP)
					}
					resent[f.ID] = true
				}
				if len(resent) != len(inflightUDP) {
					t.Fatalf("%d UDP queries resent, %d were in flight", len(resent), len(inflightUDP))
				}
				inflightTCP = map[ForwardID]uint64{}
				inflightUDP = resent
			},
			"": func(t *rapid.T) {
				for _, s := range sents {
					if r.TCPConns(s) != count(s) {
						t.Fatalf("%s: core has %d conns, model %d", s, r.TCPConns(s), count(s))
					}
				}
				if r.InFlight() != len(inflightTCP)+len(inflightUDP) {
					t.Fatalf("in flight %d, model %d", r.InFlight(), len(inflightTCP)+len(inflightUDP))
				}
			},
		})
	})
}

// FuzzHandleQuery: any bytes give either no reply or a well-formed reply with QR set, the query's id and
// at most 512 bytes; never a panic.
func FuzzHandleQuery(f *testing.F) {
	f.Add(query(f, "app.example.com", mdns.TypeA, 1))
	f.Add(query(f, "x.org", mdns.TypeTXT, 2))
	f.Add(query(f, "1.0.96.100.in-addr.arpa", mdns.TypePTR, 3))
	m := new(mdns.Msg)
	m.SetQuestion("app.example.com.", mdns.TypeAAAA)
	m.SetEdns0(1400, true)
	b, _ := m.Pack()
	f.Add(b)
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := newTestResolver(t)
		_ = r.SetResources([]Resource{{ID: "r", Address: "**.example.com"}, {ID: "q", Address: "?.x"}}, nil)
		out, ok := r.HandleQuery(udpSrc(sent1), data, t0, nil)
		if !ok {
			return
		}
		if len(out) > 512 {
			t.Fatalf("reply of %d bytes", len(out))
		}
		rep := new(mdns.Msg)
		if err := rep.Unpack(out); err != nil {
			t.Fatalf("malformed reply: %v (% x)", err, out)
		}
		if !rep.Response || rep.Id != binary.BigEndian.Uint16(data) {
			t.Fatalf("bad reply header: %v", rep)
		}
	})
}

// FuzzUpstreamResponse: any upstream bytes give a UDP reply that is within the limit and parses, with the
// application's id; never a panic.
func FuzzUpstreamResponse(f *testing.F) {
	resp := new(mdns.Msg)
	resp.SetQuestion("big.example.org.", mdns.TypeTXT)
	resp.Response = true
	for i := 0; i < 8; i++ {
		resp.Answer = append(resp.Answer, &mdns.TXT{Hdr: mdns.RR_Header{Name: "big.example.org.", Rrtype: mdns.TypeTXT, Class: 1},
			Txt: []string{strings.Repeat("y", 200)}})
	}
	big, _ := resp.Pack()
	resp.SetEdns0(4096, true)
	resp.IsEdns0().Option = []mdns.EDNS0{&mdns.EDNS0_COOKIE{Code: mdns.EDNS0COOKIE, Cookie: "0102030405060708"}}
	bigOPT, _ := resp.Pack()
	f.Add(bigOPT, uint16(1232))
	f.Add(bigOPT, uint16(0))
	f.Add(big, uint16(0))
	f.Add(big, uint16(1400))
	f.Add(big[:600], uint16(4096))
	f.Add([]byte{0, 0, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 0x0C, 0, 1, 0, 1}, uint16(512))
	f.Fuzz(func(t *testing.T, data []byte, edns uint16) {
		r := newTestResolver(t)
		q := new(mdns.Msg)
		q.SetQuestion("big.example.org.", mdns.TypeTXT)
		if edns > 0 {
			q.SetEdns0(edns, false)
		}
		qb, _ := q.Pack()
		r.HandleQuery(udpSrc(sent1), qb, t0, nil)
		fw, _ := r.PollForward()
		if len(data) >= 2 {
			data[0], data[1] = qb[0], qb[1] // the driver only delivers answers with the right id
		}
		r.HandleUpstreamResponse(fw.ID, data, t0)
		rep, ok := r.PollReply()
		if !ok {
			t.Fatal("no reply")
		}
		limit := 512
		if edns >= 512 {
			limit = min(int(edns), MaxUDPPayload)
		}
		if len(rep.Payload) > limit {
			t.Fatalf("reply %d > limit %d", len(rep.Payload), limit)
		}
		if len(data) > limit || binary.BigEndian.Uint16(rep.Payload[2:])&0x8000 == 0 {
			m := new(mdns.Msg)
			if err := m.Unpack(rep.Payload); err != nil {
				t.Fatalf("generated reply does not parse: %v", err)
			}
			if m.Id != q.Id || !m.Response {
				t.Fatalf("bad header %v", m)
			}
		}
	})
}

// FuzzPattern: any resource address from the portal parses or errors, and matching never panics.
func FuzzPattern(f *testing.F) {
	for _, s := range []string{"**.example.com", "*.x", "?.x", "a*b?c.**.d", "x.", "..", "***"} {
		f.Add(s, "a.b.example.com")
	}
	f.Fuzz(func(t *testing.T, pat, name string) {
		p, err := dnspattern.Parse(pat)
		if err != nil {
			return
		}
		m := p.Match(name)
		if p.Exact() && !p.Match(p.String()) {
			t.Fatalf("exact pattern %q does not match itself", p)
		}
		// The normalised text parses back to the same pattern.
		q, err := dnspattern.Parse(p.String())
		if err != nil || q.String() != p.String() || q.Exact() != p.Exact() || q.Match(name) != m {
			t.Fatalf("%q normalised to %q, which parses to %q (%v)", pat, p, q, err)
		}
		// Matching ignores ASCII case and one trailing dot.
		if p.Match(asciiUpper(name)) != m || (!strings.HasSuffix(name, ".") && p.Match(name+".") != m) {
			t.Fatalf("%q matches %q: %v, but not in another case or with a trailing dot", p, name, m)
		}
		// An exact pattern matches its own name only; a wildcard never matches the bare suffix it is
		// anchored to with "*" or "?" (one label required).
		if p.Exact() && m && !strings.EqualFold(strings.TrimSuffix(name, "."), p.String()) {
			t.Fatalf("exact %q matched %q", p, name)
		}
		if rest, ok := strings.CutPrefix(p.String(), "*."); ok && p.Match(rest) {
			t.Fatalf("%q matched its bare suffix %q", p, rest)
		}
		if p.MoreSpecificThan(p) {
			t.Fatalf("%q is more specific than itself", p)
		}
	})
}

// asciiUpper upper-cases ASCII letters only (DNS names compare case-insensitively in ASCII, RFC 4343).
func asciiUpper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'a' && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}
