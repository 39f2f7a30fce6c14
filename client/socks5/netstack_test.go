package socks5

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/net/proxy"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/snowgate/snowgate/gateway/userfwd"
	"github.com/snowgate/snowgate/internal/tunpipe"
)

// netstackServer returns a Server whose outgoing connections and sockets go through tnet, as the
// userspace client's daemon builds it. UDP sockets are bound to the netstack's own address of the family:
// gVisor cannot route from a socket bound to 0.0.0.0 or ::, and tun/netstack cannot open an unbound one.
func netstackServer(tnet *netstack.Net, own4, own6 netip.Addr, names map[string][]netip.Addr) *Server {
	return &Server{
		Dial:    tnet.DialContext,
		Resolve: fakeResolver(names),
		ListenPacket: func(_ context.Context, network, _ string) (net.PacketConn, error) {
			own := own4
			if network == "udp6" {
				own = own6
			}
			return tnet.ListenUDPAddrPort(netip.AddrPortFrom(own, 0))
		},
		Logger: discardLogger(),
	}
}

// viaProxy is an HTTP client that connects through the SOCKS5 proxy with golang.org/x/net/proxy (an
// independent client implementation, which sends host names as DOMAINNAME).
func viaProxy(t *testing.T, proxyAddr string) *http.Client {
	t.Helper()
	d, err := proxy.SOCKS5("tcp", proxyAddr, nil, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Transport: &http.Transport{
		DialContext:       d.(proxy.ContextDialer).DialContext,
		DisableKeepAlives: true,
	}}
}

func get(t *testing.T, hc *http.Client, url string) string {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %q %v", url, resp.StatusCode, b, err)
	}
	return string(b)
}

// TestOverNetstackPair: the proxy dials from one wireguard-go netstack into another one, joined by a packet
// pipe, where an HTTP server and a UDP echo server listen.
func TestOverNetstackPair(t *testing.T) {
	a4, a6 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	b4, b6 := netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("2001:db8::2")
	devA, tnetA, err := netstack.CreateNetTUN([]netip.Addr{a4, a6}, nil, 1280)
	if err != nil {
		t.Fatal(err)
	}
	devB, tnetB, err := netstack.CreateNetTUN([]netip.Addr{b4, b6}, nil, 1280)
	if err != nil {
		t.Fatal(err)
	}
	pipe := tunpipe.Join(devA, devB, nil)
	t.Cleanup(func() { pipe.Close() })

	var servers []io.Closer
	for _, ip := range []netip.Addr{b4, b6} {
		ln, err := tnetB.ListenTCPAddrPort(netip.AddrPortFrom(ip, 80))
		if err != nil {
			t.Fatal(err)
		}
		hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s to %s", r.Host, ip)
		})}
		go hs.Serve(ln)
		servers = append(servers, hs)
	}
	echo, err := tnetB.ListenUDPAddrPort(netip.AddrPortFrom(b4, 7))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 2000)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			echo.WriteTo(buf[:n], from)
		}
	}()
	servers = append(servers, echo)
	t.Cleanup(func() {
		for _, s := range servers {
			s.Close()
		}
	})

	srv := netstackServer(tnetA, a4, a6, map[string][]netip.Addr{"web.snowgate.test": {b6, b4}, "web6.snowgate.test": {b6}})
	proxyAddr := startServer(t, srv)
	hc := viaProxy(t, proxyAddr)
	if got := get(t, hc, "http://web.snowgate.test/"); got != "hello from web.snowgate.test to 192.0.2.2" {
		t.Fatalf("by name: %q (IPv4 is tried first)", got)
	}
	if got := get(t, hc, "http://web6.snowgate.test/"); got != "hello from web6.snowgate.test to 2001:db8::2" {
		t.Fatalf("by IPv6-only name: %q", got)
	}
	if got := get(t, hc, "http://[2001:db8::2]/"); !strings.HasSuffix(got, "to 2001:db8::2") {
		t.Fatalf("by IPv6 address: %q", got)
	}
	// A port nobody listens on in the other netstack: gVisor's RST becomes "connection refused".
	_, rep := connect(t, proxyAddr, Addr{IP: b4, Port: 81})
	if rep != ReplyConnectionRefused {
		t.Fatalf("closed port in the netstack: reply %v", rep)
	}

	// UDP ASSOCIATE through the netstack, by address and by name.
	_, relay := udpAssociate(t, proxyAddr, Addr{IP: netip.IPv4Unspecified()})
	u := listenUDP(t, "127.0.0.1:0")
	for _, dst := range []Addr{{IP: b4, Port: 7}, {Name: "web.snowgate.test", Port: 7}} {
		sendDatagram(t, u, relay, Datagram{Addr: dst, Payload: []byte("through the netstack")})
		d := readDatagram(t, u)
		if string(d.Payload) != "through the netstack" || d.Addr != (Addr{IP: b4, Port: 7}) {
			t.Fatalf("to %v: got %q from %v", dst, d.Payload, d.Addr)
		}
	}
	if err := pipe.Err(); err != nil {
		t.Fatalf("pipe: %v", err)
	}
}

// TestUserspaceDataPath is the userspace data path without WireGuard: curl → this proxy → the client's
// netstack → packet pipe → the gateway's userspace forwarder → a host socket → an HTTP server on loopback.
// The resource's address 198.18.0.10 is mapped onto the host's loopback by the forwarder's Dial.
func TestUserspaceDataPath(t *testing.T) {
	web := helloServer(t)
	echo := newRecordingEcho(t, "udp4", "127.0.0.1:0")
	resource := netip.MustParseAddr("198.18.0.10")
	fwd, err := userfwd.New(userfwd.Config{
		Logger: discardLogger(),
		ICMP:   userfwd.ICMPDisabled,
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(address)
			if err != nil || ap.Addr() != resource {
				return nil, errors.New("not the test resource")
			}
			if strings.HasPrefix(network, "udp") {
				return (&net.Dialer{}).DialContext(ctx, network, echo.addr().String())
			}
			return (&net.Dialer{}).DialContext(ctx, network, netip.AddrPortFrom(web.Addr(), ap.Port()).String())
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctun, tnet, err := netstack.CreateNetTUN([]netip.Addr{netip.MustParseAddr("192.0.2.2")}, nil, 1280)
	if err != nil {
		t.Fatal(err)
	}
	pipe := tunpipe.Join(ctun, fwd, nil)
	t.Cleanup(func() { pipe.Close() })

	srv := netstackServer(tnet, netip.MustParseAddr("192.0.2.2"), netip.Addr{}, map[string][]netip.Addr{"demo.snowgate.test": {resource}})
	proxyAddr := startServer(t, srv)
	url := fmt.Sprintf("http://demo.snowgate.test:%d/", web.Port())
	out, errOut, err := runCurl(t, "--socks5-hostname", proxyAddr, url)
	if err != nil {
		t.Fatalf("curl: %v: %s", err, errOut)
	}
	if want := fmt.Sprintf("hello from demo.snowgate.test:%d", web.Port()); out != want {
		t.Fatalf("curl got %q, want %q", out, want)
	}
	if s := fwd.Stats().TCP; s.Opened != 1 {
		t.Fatalf("forwarder TCP stats %+v", s)
	}

	_, relay := udpAssociate(t, proxyAddr, Addr{IP: netip.IPv4Unspecified()})
	u := listenUDP(t, "127.0.0.1:0")
	sendDatagram(t, u, relay, Datagram{Addr: Addr{Name: "demo.snowgate.test", Port: 5353}, Payload: []byte("dns?")})
	if d := readDatagram(t, u); string(d.Payload) != "dns?" || d.Addr != (Addr{IP: resource, Port: 5353}) {
		t.Fatalf("UDP through the forwarder: %q from %v", d.Payload, d.Addr)
	}
}
