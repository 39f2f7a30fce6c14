package dns

import (
	"encoding/binary"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"
)

// answerTo builds an upstream answer to the query q (one A record), then lets edit change it.
func answerTo(t tb, q []byte, edit func(m *mdns.Msg)) []byte {
	t.Helper()
	m := new(mdns.Msg)
	if err := m.Unpack(q); err != nil {
		t.Fatal(err)
	}
	m.Response = true
	m.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: m.Question[0].Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET},
		A: []byte{192, 0, 2, 1}}}
	if edit != nil {
		edit(m)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAnswerMatchesQuery: the RFC 5452 question rules, one case each.
func TestAnswerMatchesQuery(t *testing.T) {
	q := query(t, "WwW.Example.ORG", mdns.TypeA, 7)
	cases := []struct {
		name   string
		answer func() []byte
		want   bool
	}{
		{"same question", func() []byte { return answerTo(t, q, nil) }, true},
		{"name in other case (0x20)", func() []byte {
			return answerTo(t, q, func(m *mdns.Msg) { m.Question[0].Name = "www.EXAMPLE.org." })
		}, true},
		{"other id (drivers rewrite ids)", func() []byte { return answerTo(t, q, func(m *mdns.Msg) { m.Id = 8 }) }, true},
		{"other name", func() []byte {
			return answerTo(t, q, func(m *mdns.Msg) { m.Question[0].Name = "www.example.net." })
		}, false},
		{"longer name", func() []byte {
			return answerTo(t, q, func(m *mdns.Msg) { m.Question[0].Name = "www.example.org.evil." })
		}, false},
		{"other type", func() []byte {
			return answerTo(t, q, func(m *mdns.Msg) { m.Question[0].Qtype = mdns.TypeAAAA })
		}, false},
		{"type differing only in letter case bit", func() []byte {
			return answerTo(t, q, func(m *mdns.Msg) { m.Question[0].Qtype = mdns.TypeA | 0x20 })
		}, false},
		{"other class", func() []byte {
			return answerTo(t, q, func(m *mdns.Msg) { m.Question[0].Qclass = mdns.ClassCHAOS })
		}, false},
		{"no question", func() []byte { return answerTo(t, q, func(m *mdns.Msg) { m.Question = nil }) }, false},
		{"two questions", func() []byte {
			return answerTo(t, q, func(m *mdns.Msg) { m.Question = append(m.Question, m.Question[0]) })
		}, false},
		{"not a response", func() []byte { return answerTo(t, q, func(m *mdns.Msg) { m.Response = false }) }, false},
		{"cut inside the question", func() []byte { return answerTo(t, q, nil)[:20] }, false},
		{"header only", func() []byte { return answerTo(t, q, nil)[:12] }, false},
		{"empty", func() []byte { return nil }, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := AnswerMatchesQuery(q, c.answer()); got != c.want {
				t.Errorf("AnswerMatchesQuery = %v, want %v", got, c.want)
			}
		})
	}
	if AnswerMatchesQuery(q[:11], answerTo(t, q, nil)) {
		t.Error("a query shorter than a header matched")
	}
}

// TestUpstreamPacketWrongQuestionDropped: a raw answer with the right upstream and id but another question is
// not delivered (before: matched by id alone, and the application got the spoofed record); the real answer
// still is.
func TestUpstreamPacketWrongQuestionDropped(t *testing.T) {
	r := newTestResolver(t)
	r.HandleQuery(udpSrc(sent1), query(t, "bank.org", mdns.TypeA, 99), t0, nil)
	f, ok := r.PollForward()
	if !ok {
		t.Fatal("not forwarded")
	}
	spoof := answerTo(t, f.Query, func(m *mdns.Msg) { m.Question[0].Name = "evil.org." })
	if r.HandleUpstreamPacket(up1, spoof, t0) {
		t.Error("answer with the wrong question matched")
	}
	if _, ok := r.PollReply(); ok {
		t.Fatal("the spoofed answer produced a reply")
	}
	if !r.HandleUpstreamPacket(up1, answerTo(t, f.Query, nil), t0) {
		t.Fatal("real answer not matched")
	}
	rep, ok := r.PollReply()
	if !ok || unpack(t, rep.Payload).Rcode != mdns.RcodeSuccess {
		t.Fatalf("no NOERROR reply for the real answer: %v", ok)
	}
}

// TestUpstreamResponseWrongQuestionServfail: a driver that hands over an answer to another question gets SERVFAIL
// for the application, never the foreign records.
func TestUpstreamResponseWrongQuestionServfail(t *testing.T) {
	r := newTestResolver(t)
	r.HandleQuery(udpSrc(sent1), query(t, "bank.org", mdns.TypeA, 99), t0, nil)
	f, _ := r.PollForward()
	r.HandleUpstreamResponse(f.ID, answerTo(t, f.Query, func(m *mdns.Msg) { m.Question[0].Qtype = mdns.TypeTXT }), t0)
	rep, ok := r.PollReply()
	if !ok || unpack(t, rep.Payload).Rcode != mdns.RcodeServerFailure {
		t.Fatal("want SERVFAIL")
	}
}

// FuzzAnswerMatchesQuery: any answer bytes give a verdict without panicking, and a match implies the same
// question type and class at the same offsets.
func FuzzAnswerMatchesQuery(f *testing.F) {
	q := query(f, "a.Example.org", mdns.TypeAAAA, 1)
	f.Add(answerTo(f, q, nil))
	f.Add(answerTo(f, q, func(m *mdns.Msg) { m.Question[0].Name = "A.example.ORG." }))
	f.Add(q)
	f.Add([]byte{0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 0x0C, 0, 28, 0, 1})
	f.Fuzz(func(t *testing.T, answer []byte) {
		if !AnswerMatchesQuery(q, answer) {
			return
		}
		end, ok := questionEnd(q)
		if !ok || len(answer) < end || binary.BigEndian.Uint16(answer[end-4:]) != mdns.TypeAAAA ||
			binary.BigEndian.Uint16(answer[4:]) != 1 {
			t.Fatalf("matched a different question: %x", answer)
		}
		if _, name, _, err := readQName(answer, headerLen, nil); err != nil || string(name) != "a.example.org" {
			t.Fatalf("matched name %q (%v)", name, err)
		}
	})
}

// TestTruncatedAnswerKeepsOPT: a UDP answer cut to the application's limit keeps the upstream's OPT record
// when the query had one (RFC 6891 §7), with its extended RCODE, version, DO bit and options; when the OPT
// record with its options would not fit, it is kept without them. Before, the answer was cut after the
// question and the OPT record lost.
func TestTruncatedAnswerKeepsOPT(t *testing.T) {
	for _, c := range []struct {
		name        string
		optionBytes int // size of the upstream's padding option
		wantOptions bool
	}{
		{"with its options", 16, true},
		{"options too large to keep", 1200, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newTestResolver(t)
			q := new(mdns.Msg)
			q.SetQuestion("big.example.org.", mdns.TypeTXT)
			q.Id = 99
			q.SetEdns0(1232, true)
			qb, _ := q.Pack()
			r.HandleQuery(udpSrc(sent1), qb, t0, nil)
			f, _ := r.PollForward()
			resp := answerTo(t, f.Query, func(m *mdns.Msg) {
				m.Answer = nil
				for i := range 12 {
					m.Answer = append(m.Answer, &mdns.TXT{Hdr: mdns.RR_Header{Name: "big.example.org.", Rrtype: mdns.TypeTXT, Class: 1, Ttl: 5},
						Txt: []string{strings.Repeat(string(rune('a'+i)), 200)}})
				}
				m.Extra = nil
				m.SetEdns0(4096, true)
				opt := m.IsEdns0()
				m.Rcode = mdns.RcodeBadVers // an extended RCODE: its upper bits live in the OPT record
				opt.Option = append(opt.Option, &mdns.EDNS0_PADDING{Padding: make([]byte, c.optionBytes)})
			})
			r.HandleUpstreamResponse(f.ID, resp, t0)
			rep, ok := r.PollReply()
			if !ok {
				t.Fatal("no reply")
			}
			if len(rep.Payload) > 1212 {
				t.Fatalf("reply of %d bytes", len(rep.Payload))
			}
			m := unpack(t, rep.Payload)
			if !m.Truncated || m.Id != 99 || len(m.Answer) != 0 || len(m.Question) != 1 {
				t.Fatalf("not truncated properly: %v", m)
			}
			opt := m.IsEdns0()
			if opt == nil || len(m.Extra) != 1 {
				t.Fatalf("truncated answer without the OPT record: %v", m)
			}
			if opt.UDPSize() != 4096 || !opt.Do() || m.Rcode != mdns.RcodeBadVers {
				t.Errorf("OPT record changed: size %d, DO %v, rcode %s", opt.UDPSize(), opt.Do(), mdns.RcodeToString[m.Rcode])
			}
			if got := len(opt.Option) == 1; got != c.wantOptions {
				t.Errorf("options kept = %v, want %v (%v)", got, c.wantOptions, opt.Option)
			}
		})
	}
}
