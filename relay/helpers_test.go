package relay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v4"
	"github.com/snowgate/snowgate/internal/telemetry"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	lo4 = netip.MustParseAddr("127.0.0.1")
	lo6 = netip.MustParseAddr("::1")
)

// testLogger writes debug logs to stderr when RELAY_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("RELAY_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: telemetry.LevelTrace}))
}

// loopbackConfig serves both families on loopback with an ephemeral port.
func loopbackConfig() Config {
	return Config{
		PublicIP4: lo4, ListenAddr4: lo4,
		PublicIP6: lo6, ListenAddr6: lo6,
		ListenPort:   -1,
		Sockets:      2,
		DrainTimeout: -1,
		Logger:       testLogger(),
	}
}

func startRelay(t testing.TB, cfg Config) *Server {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// firezoneCreds returns a username/password valid for validity on s.
func firezoneCreds(s *Server, salt string, validity time.Duration) (string, string) {
	u := strconv.FormatInt(time.Now().Add(validity).Unix(), 10) + ":" + salt
	return u, FirezonePassword(u, s.StampSecret())
}

// rawClient speaks STUN/TURN by hand so tests can check exact error codes.
type rawClient struct {
	t                 testing.TB
	conn              *net.UDPConn
	server            *net.UDPAddr
	user, pass, realm string
	nonce             string
}

func newRawClient(t testing.TB, server netip.AddrPort, user, pass string) *rawClient {
	t.Helper()
	network := "udp4"
	local := "127.0.0.1:0"
	if server.Addr().Is6() {
		network, local = "udp6", "[::1]:0"
	}
	la, _ := net.ResolveUDPAddr(network, local)
	c, err := net.ListenUDP(network, la)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &rawClient{t: t, conn: c, server: net.UDPAddrFromAddrPort(server), user: user, pass: pass}
}

// roundTrip sends msg and returns the response with the same transaction id.
func (r *rawClient) roundTrip(msg *stun.Message) (*stun.Message, error) {
	if _, err := r.conn.WriteToUDP(msg.Raw, r.server); err != nil {
		return nil, fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, 2048)
	deadline := time.Now().Add(3 * time.Second)
	for {
		_ = r.conn.SetReadDeadline(deadline)
		n, _, err := r.conn.ReadFromUDP(buf)
		if err != nil {
			return nil, fmt.Errorf("read: %w", err)
		}
		if !stun.IsMessage(buf[:n]) {
			continue
		}
		resp := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if err := resp.Decode(); err != nil {
			return nil, fmt.Errorf("decode: %w", err)
		}
		if resp.TransactionID == msg.TransactionID {
			return resp, nil
		}
	}
}

// request performs an authenticated request of method with attrs, doing
// the 401 nonce dance first if needed. It returns the final response.
func (r *rawClient) request(method stun.Method, attrs ...stun.Setter) *stun.Message {
	r.t.Helper()
	for attempt := 0; attempt < 3; attempt++ {
		setters := []stun.Setter{stun.TransactionID, stun.NewType(method, stun.ClassRequest)}
		setters = append(setters, attrs...)
		if r.nonce != "" {
			setters = append(setters, stun.NewUsername(r.user), stun.NewRealm(r.realm), stun.NewNonce(r.nonce),
				stun.NewLongTermIntegrity(r.user, r.realm, r.pass))
		}
		msg, err := stun.Build(setters...)
		if err != nil {
			r.t.Fatalf("build: %v", err)
		}
		resp, err := r.roundTrip(msg)
		if err != nil {
			r.t.Fatalf("%v request: %v", method, err)
		}
		code := errorCode(resp)
		if (code == stun.CodeUnauthorized && r.nonce == "") || code == stun.CodeStaleNonce {
			var nonce stun.Nonce
			var realm stun.Realm
			if nonce.GetFrom(resp) == nil && realm.GetFrom(resp) == nil {
				r.nonce, r.realm = nonce.String(), realm.String()
				continue
			}
		}
		return resp
	}
	r.t.Fatalf("%v: no final response", method)
	return nil
}

func errorCode(m *stun.Message) stun.ErrorCode {
	if m.Type.Class != stun.ClassErrorResponse {
		return 0
	}
	var ec stun.ErrorCodeAttribute
	if err := ec.GetFrom(m); err != nil {
		return -1
	}
	return ec.Code
}

func requestedTransportUDP() stun.Setter {
	return stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}}
}

func lifetimeAttr(d time.Duration) stun.Setter {
	v := make([]byte, 4)
	binary.BigEndian.PutUint32(v, uint32(d/time.Second))
	return stun.RawAttribute{Type: stun.AttrLifetime, Value: v}
}

func familyAttr(v6 bool) stun.Setter {
	f := byte(0x01)
	if v6 {
		f = 0x02
	}
	return stun.RawAttribute{Type: stun.AttrRequestedAddressFamily, Value: []byte{f, 0, 0, 0}}
}

func peerAttr(a netip.AddrPort) stun.Setter {
	return setterFunc(func(m *stun.Message) error {
		x := stun.XORMappedAddress{IP: a.Addr().AsSlice(), Port: int(a.Port())}
		return x.AddToAs(m, stun.AttrXORPeerAddress)
	})
}

func channelAttr(n uint16) stun.Setter {
	return stun.RawAttribute{Type: stun.AttrChannelNumber, Value: []byte{byte(n >> 8), byte(n), 0, 0}}
}

type setterFunc func(m *stun.Message) error

func (f setterFunc) AddTo(m *stun.Message) error { return f(m) }

// allocate performs an Allocate and returns the relayed address.
func (r *rawClient) allocate(extra ...stun.Setter) (netip.AddrPort, error) {
	r.t.Helper()
	resp := r.request(stun.MethodAllocate, append([]stun.Setter{requestedTransportUDP()}, extra...)...)
	if c := errorCode(resp); c != 0 {
		return netip.AddrPort{}, fmt.Errorf("allocate: error %d", c)
	}
	var relayed stun.XORMappedAddress
	if err := relayed.GetFromAs(resp, stun.AttrXORRelayedAddress); err != nil {
		return netip.AddrPort{}, fmt.Errorf("no relayed address: %w", err)
	}
	a, _ := netip.AddrFromSlice(relayed.IP)
	return netip.AddrPortFrom(a.Unmap(), uint16(relayed.Port)), nil //nolint:gosec
}

// waitFor polls cond every 10 ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// portFree reports whether a UDP port can be bound again on addr.
func portFree(a netip.AddrPort) bool {
	network := "udp4"
	if a.Addr().Is6() {
		network = "udp6"
	}
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(a))
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// readFrom reads one datagram with a deadline.
func readFrom(c net.PacketConn, timeout time.Duration) ([]byte, net.Addr, error) {
	buf := make([]byte, 2048)
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	n, from, err := c.ReadFrom(buf)
	if err != nil {
		return nil, nil, err
	}
	return buf[:n], from, nil
}

var errMismatch = errors.New("mismatch")

func expectData(c net.PacketConn, want []byte) error {
	got, _, err := readFrom(c, 3*time.Second)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%w: got %q want %q", errMismatch, got, want)
	}
	return nil
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// ownUDPPorts returns the local ports of the UDP sockets this process holds (Linux: its socket inodes
// in /proc/self/fd joined with /proc/net/udp and udp6), or ok false where /proc cannot tell. Unlike
// portFree, it is not fooled by another process (another test package, say) that took the same port
// from the ephemeral range after the relay let it go.
func ownUDPPorts() (ports map[uint16]bool, ok bool) {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, false
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink("/proc/self/fd/" + fd.Name())
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	ports = map[uint16]bool{}
	for _, table := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			return nil, false
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || !inodes[f[9]] {
				continue
			}
			_, portHex, found := strings.Cut(f[1], ":")
			if !found {
				continue
			}
			if p, err := strconv.ParseUint(portHex, 16, 16); err == nil {
				ports[uint16(p)] = true
			}
		}
	}
	return ports, true
}
