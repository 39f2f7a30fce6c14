package node

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/ice/v4"
)

// udpPacket builds an IPv4/UDP packet of the given total size from src to dst.
func udpPacket(src, dst netip.Addr, size int) []byte {
	p := make([]byte, size)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:4], uint16(size))
	p[8] = 64
	p[9] = 17
	s4, d4 := src.As4(), dst.As4()
	copy(p[12:16], s4[:])
	copy(p[16:20], d4[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i : i+2]))
	}
	for sum > 0xffff {
		sum = (sum >> 16) + (sum & 0xffff)
	}
	binary.BigEndian.PutUint16(p[10:12], ^uint16(sum))
	binary.BigEndian.PutUint16(p[20:22], 40000)
	binary.BigEndian.PutUint16(p[22:24], 5001)
	binary.BigEndian.PutUint16(p[24:26], uint16(size-20))
	return p
}

// benchPair connects two nodes on loopback (relay-only when relayed).
func benchPair(b *testing.B, relayed bool) (*testNode, *testNode) {
	relay := startRelay(b)
	var mod func(*Config)
	if relayed {
		mod = func(c *Config) { c.TestOnlyCandidateTypes = []ice.CandidateType{ice.CandidateTypeRelay} }
	}
	a := newTestNode(b, "100.64.0.1", mod)
	c := newTestNode(b, "100.64.0.2", mod)
	giveRelays(b, a, c, relay)
	connect(b, a, c, "c1", credsA, credsB)
	roundTrip(b, a, c, 5*time.Second)
	return a, c
}

// BenchmarkThroughput pushes 1280-byte IP packets from one node's TUN to the
// other's through WireGuard on loopback, directly and through our relay
// (relay.New with its default socket buffers, as deployed). The sender keeps at most 256 packets in flight (a packet not
// delivered within 20 ms counts as lost), like a congestion-controlled flow;
// Mbit/s is the delivered goodput.
func BenchmarkThroughput(b *testing.B) {
	for _, relayed := range []bool{false, true} {
		name := "direct"
		if relayed {
			name = "relayed"
		}
		b.Run(name, func(b *testing.B) {
			a, c := benchPair(b, relayed)
			const size, window = 1280, 256
			pkt := udpPacket(a.ip, c.ip, size)
			var got atomic.Int64
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					select {
					case <-c.tun.Inbound:
						got.Add(1)
					case <-stop:
						return
					}
				}
			}()
			b.SetBytes(size)
			b.ResetTimer()
			start := time.Now()
			var lost int64
			for i := 0; i < b.N; i++ {
				waited := time.Now()
				last := got.Load()
				for int64(i)-got.Load()-lost >= window {
					if g := got.Load(); g != last {
						last, waited = g, time.Now()
					} else if time.Since(waited) > 20*time.Millisecond {
						lost = int64(i) - g
					}
					runtime.Gosched()
				}
				a.tun.Outbound <- pkt
			}
			for wait := time.Now(); got.Load() < int64(b.N) && time.Since(wait) < 200*time.Millisecond; {
				time.Sleep(time.Millisecond)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			close(stop)
			<-done
			k := got.Load()
			b.ReportMetric(float64(k)*size*8/elapsed.Seconds()/1e6, "Mbit/s")
			b.ReportMetric(100*float64(int64(b.N)-k)/float64(b.N), "%loss")
		})
	}
}

// BenchmarkIdleWakeups100 connects a hub to 100 peers, lets every connection
// go idle and counts the hub's timer wake-ups. Timings are scaled down
// (IdleAfter 1 s, keepalive 2 s instead of 20 s / 25 s); the figure that
// carries over is wake-ups per keepalive period, reported also as wake-ups
// per minute at the real 25 s keepalive.
func BenchmarkIdleWakeups100(b *testing.B) {
	const peers = 100
	const idleAfter, keepalive = time.Second, 2 * time.Second
	short := func(c *Config) { c.IdleAfter, c.KeepaliveInterval = idleAfter, keepalive }
	relay := startRelay(b)
	hub := newTestNode(b, "100.64.0.1", short)
	hub.n.UpdateRelays(nil, []Relay{relay.relay("r1", hub.n)})
	hub.waitRelayReady(b)
	for i := 0; i < peers; i++ {
		p := newTestNode(b, fmt.Sprintf("100.64.%d.%d", 1+i/200, 1+i%200), short)
		p.n.UpdateRelays(nil, []Relay{relay.relay("r1", p.n)})
		p.waitRelayReady(b)
		hubSignalsTo(hub, p)
		connectHub(b, hub, p, fmt.Sprintf("c%03d", i), i)
	}
	if !hub.waitCount(60*time.Second, peers, func(e Event) bool { return e.Kind == EventConnectionEstablished }) {
		b.Fatalf("not all %d connections established", peers)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !allIdle(hub.n) {
		if time.Now().After(deadline) {
			b.Fatal("connections did not go idle")
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(agentGrace + time.Second)
	agents := hub.n.liveAgents.Load()
	const periods = 5
	// Start right after a wake-up, then cover exactly `periods` keepalive ticks.
	for w := hub.n.Wakeups(); hub.n.Wakeups() == w; {
		time.Sleep(5 * time.Millisecond)
	}
	b.ResetTimer()
	before := hub.n.Wakeups()
	time.Sleep(periods*keepalive + keepalive/2)
	woke := hub.n.Wakeups() - before
	b.StopTimer()
	perPeriod := float64(woke) / periods
	b.ReportMetric(perPeriod, "wakeups/keepalive-period")
	b.ReportMetric(perPeriod*60/25, "wakeups/min@25s")
	b.ReportMetric(float64(agents), "ice-agents-alive")
	b.Logf("%d idle connections: %d hub wake-ups in %d keepalive periods; %d ICE agents alive", peers, woke, periods, agents)
}

// BenchmarkConnect measures a connection's setup on loopback: upsert on both
// nodes (new credentials each time, so ICE and the WireGuard handshake run
// from scratch) until the first packet's round trip completes.
func BenchmarkConnect(b *testing.B) {
	for _, relayed := range []bool{false, true} {
		name := "direct"
		if relayed {
			name = "relayed"
		}
		b.Run(name, func(b *testing.B) {
			a, c := benchPair(b, relayed)
			i := 0
			for b.Loop() {
				i++
				ca := Credentials{Ufrag: fmt.Sprintf("bca%05d", i), Password: fmt.Sprintf("benchpasswordA%014d", i)}
				cc := Credentials{Ufrag: fmt.Sprintf("bcc%05d", i), Password: fmt.Sprintf("benchpasswordC%014d", i)}
				connect(b, a, c, "c1", ca, cc)
				roundTrip(b, a, c, 5*time.Second)
			}
		})
	}
}
