package relay

import (
	"net"
	"testing"

	"github.com/pion/stun/v4"
)

// FuzzInterceptor feeds untrusted datagrams to the listener's pre-pion hooks
// (the ChannelBind interceptor and the ChannelData fast path).
func FuzzInterceptor(f *testing.F) {
	cb := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodChannelBind, stun.ClassRequest),
		peerAttr(mustAddrPort("127.0.0.1:9")), channelAttr(0x4000),
		stun.NewUsername("1:a"), stun.NewRealm(DefaultRealm), stun.NewNonce("n"),
		stun.NewLongTermIntegrity("1:a", DefaultRealm, "p"))
	f.Add(cb.Raw)
	f.Add(cb.Raw[:24])
	f.Add([]byte{0x00, 0x09})
	f.Add([]byte{0x40, 0x00, 0x00, 0x00})
	s, err := New(loopbackConfig())
	if err != nil {
		f.Fatal(err)
	}
	sock, err := openUDP("udp4", mustAddrPort("127.0.0.1:0"), socketOptions{})
	if err != nil {
		f.Fatal(err)
	}
	defer sock.close()
	lc := &listenerConn{workerConn: workerConn{sock: sock}, shard: s.stats.shard(0), stats: s.stats}
	hook := s.interceptor(lc)
	from := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	f.Fuzz(func(t *testing.T, b []byte) {
		if hook(b, from) {
			t.Fatalf("intercepted a datagram without valid credentials: %x", b)
		}
		if _, _, ok := s.fast.route(b, from.AddrPort()); ok {
			t.Fatalf("forwarded ChannelData without a bound channel: %x", b)
		}
	})
}
