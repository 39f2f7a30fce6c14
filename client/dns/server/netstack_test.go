package server

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/snowgate/snowgate/client/dns"
	"github.com/snowgate/snowgate/client/dns/tcpdns"
)

// TestNetstackSentinelTCP runs DNS over TCP to the sentinel through the userspace stack: an "application"
// stack (wireguard-go's tun/netstack with a tunnel address) exchanges raw IP packets with the sentinel stack
// exactly as the client's TUN would. It checks answers, the 10-connection limit and reset on roam.
func TestNetstackSentinelTCP(t *testing.T) {
	upstream := fakeUpstream(t)
	r, err := dns.New(dns.Config{UpstreamDNS: []netip.AddrPort{upstream}, UpstreamTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_ = r.SetResources([]dns.Resource{{ID: "res", Address: "**.corp.test"}}, nil)
	srv, err := New(Config{Resolver: r})
	if err != nil {
		t.Fatal(err)
	}
	sent := r.Sentinels()[0].Addr
	st, err := tcpdns.New([]netip.Addr{sent}, 1280)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := st.Listen(netip.AddrPortFrom(sent, 53))
	if err != nil {
		t.Fatal(err)
	}
	appTun, appNet, err := netstack.CreateNetTUN([]netip.Addr{netip.MustParseAddr("100.64.0.2")}, nil, 1280)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); _ = srv.Serve(ctx, sent, nil, ln) }()
	go func() { // sentinel stack → "TUN" → application
		defer wg.Done()
		buf := make([]byte, 2000)
		for {
			n, err := st.ReadPacket(ctx, buf)
			if err != nil {
				return
			}
			_, _ = appTun.Write([][]byte{buf[:n]}, 0)
		}
	}()
	go func() { // application → "TUN" → sentinel stack
		defer wg.Done()
		bufs := [][]byte{make([]byte, 2000)}
		sizes := []int{0}
		for {
			n, err := appTun.Read(bufs, sizes, 0)
			if err != nil {
				return
			}
			if n == 1 {
				_ = st.WritePacket(bufs[0][:sizes[0]])
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = srv.Close()
		st.Close()
		_ = appTun.Close()
		wg.Wait()
	})
	dial := func() (net.Conn, error) {
		dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
		defer dcancel()
		return appNet.DialContextTCPAddrPort(dctx, netip.AddrPortFrom(sent, 53))
	}
	c, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := pipeline(t, c, "a.corp.test.", "example.org.", "b.corp.test.")
	if len(got[100].Answer) != 4 || len(got[101].Answer) != 1 || len(got[102].Answer) != 4 {
		t.Errorf("answers through netstack: %v", got)
	}
	_ = c.Close()
	time.Sleep(50 * time.Millisecond)
	testLimitAndRoam(t, srv, dial, "")
}
