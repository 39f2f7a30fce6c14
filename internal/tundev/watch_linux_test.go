//go:build linux

package tundev

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/snowgate/snowgate/internal/netlab"
)

// fakeSub stands in for a netlink subscription: the test feeds updates into the channel the
// watcher gave it, and kill simulates the library ending the subscription after a socket error.
type fakeSub[T any] struct {
	mu     sync.Mutex
	starts int
	fail   bool
	ch     chan<- T
	kill   chan struct{}
}

func (f *fakeSub[T]) subscribe(ch chan<- T, done <-chan struct{}) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.starts++
	if f.fail {
		return errors.New("subscribe failed")
	}
	kill := make(chan struct{})
	f.ch, f.kill = ch, kill
	go func() { // the library's receive goroutine: closes ch when the socket closes or fails
		select {
		case <-done:
		case <-kill:
		}
		close(ch)
	}()
	return nil
}

func (f *fakeSub[T]) send(u T) {
	f.mu.Lock()
	ch := f.ch
	f.mu.Unlock()
	ch <- u
}

func (f *fakeSub[T]) breakIt() {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.kill)
}

func (f *fakeSub[T]) setFail(fail bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = fail
}

func (f *fakeSub[T]) startCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.starts
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func addrUpdate(index int) netlink.AddrUpdate {
	return netlink.AddrUpdate{LinkIndex: index, NewAddr: true}
}

func routeUpdate(index int, dst string) netlink.RouteUpdate {
	r := netlink.Route{LinkIndex: index, Family: unix.AF_INET}
	if dst != "" {
		r.Dst = ipNet(netip.MustParsePrefix(dst))
	}
	return netlink.RouteUpdate{Type: unix.RTM_NEWROUTE, Route: r}
}

// TestWatcherCoalescesAndRecovers drives the watch loop with fake subscriptions on a fake clock:
// a burst is one notification at the end of the debounce window, excluded interfaces and
// non-default routes are ignored, a broken subscription is renewed (and reported), and cancelling
// ctx stops everything and closes the channel.
func TestWatcherCoalescesAndRecovers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const debounce = 150 * time.Millisecond
		const tunIndex = 7
		ctx, cancel := context.WithCancel(t.Context())
		var addr fakeSub[netlink.AddrUpdate]
		var route fakeSub[netlink.RouteUpdate]
		released := false
		w := &watcher{
			debounce: debounce,
			log:      discard,
			excluded: func(i int) bool { return i == tunIndex },
			addr:     subscriber[netlink.AddrUpdate]{name: "address", subscribe: addr.subscribe},
			route:    subscriber[netlink.RouteUpdate]{name: "route", subscribe: route.subscribe},
			release:  func() { released = true },
		}
		out, err := w.start(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pending := func() int { synctest.Wait(); return len(out) }

		// A burst: address plus default route, three messages.
		addr.send(addrUpdate(2))
		route.send(routeUpdate(2, ""))
		addr.send(addrUpdate(2))
		time.Sleep(debounce - time.Millisecond)
		if n := pending(); n != 0 {
			t.Fatalf("notified before the debounce window ended")
		}
		time.Sleep(time.Millisecond)
		if n := pending(); n != 1 {
			t.Fatalf("%d notifications after a burst, want 1", n)
		}
		<-out
		time.Sleep(time.Minute)
		if n := pending(); n != 0 {
			t.Fatalf("a second notification for the same burst")
		}

		// Ignored: the TUN's address and default route, non-default routes elsewhere.
		addr.send(addrUpdate(tunIndex))
		route.send(routeUpdate(tunIndex, "0.0.0.0/0"))
		route.send(routeUpdate(2, "198.51.100.0/24"))
		time.Sleep(time.Minute)
		if n := pending(); n != 0 {
			t.Fatalf("notified for ignored changes")
		}

		// Two bursts while nobody reads: the second is absorbed by the unread first.
		addr.send(addrUpdate(3))
		time.Sleep(time.Second)
		route.send(routeUpdate(3, "::/0"))
		time.Sleep(time.Second)
		if n := pending(); n != 1 {
			t.Fatalf("%d notifications pending, want 1", n)
		}
		<-out

		// A subscription the kernel breaks is renewed at once and reported.
		addr.breakIt()
		time.Sleep(debounce)
		if n := pending(); n != 1 {
			t.Fatalf("%d notifications after a lost subscription, want 1", n)
		}
		<-out
		if n := addr.startCount(); n != 2 {
			t.Fatalf("address subscription started %d times, want 2", n)
		}
		addr.send(addrUpdate(2)) // the renewed subscription works
		time.Sleep(debounce)
		if n := pending(); n != 1 {
			t.Fatalf("renewed subscription: %d notifications, want 1", n)
		}
		<-out

		// A renewal that fails is retried every second until it works.
		route.setFail(true)
		route.breakIt()
		time.Sleep(2500 * time.Millisecond)
		synctest.Wait()
		if n := route.startCount(); n != 4 { // initial, renewal at 0 s, retries at 1 s and 2 s
			t.Fatalf("route subscription started %d times, want 4", n)
		}
		route.setFail(false)
		time.Sleep(time.Second)
		synctest.Wait()
		if n := route.startCount(); n != 5 {
			t.Fatalf("route subscription started %d times, want 5", n)
		}
		<-out // the loss was reported

		cancel()
		for range out {
		}
		if !released {
			t.Error("watcher did not release its namespace handle")
		}
	})
}

// TestWatchNetns watches a real namespace: adding and removing an address on the veth is reported,
// changes on the TUN (its addresses, default routes through it) are not.
func TestWatchNetns(t *testing.T) {
	lab := netlab.New(t)
	h := lab.Host("c", lab.Internet())
	cfg := testConfig(t, DNSModeDisabled)
	dev := create(t, h.Namespace, cfg)

	type obs struct {
		kind     string
		index    int
		relevant bool
	}
	observed := make(chan obs, 4096)
	ctx, cancel := context.WithCancel(context.Background())
	var changes <-chan struct{}
	do(t, h.Namespace, func() (err error) {
		changes, err = watch(ctx, WatchOptions{Exclude: dev.Name()}, func(kind string, index int, relevant bool) {
			observed <- obs{kind, index, relevant}
		})
		return err
	})
	defer func() {
		cancel()
		for range changes { // closed once the watcher's goroutines have exited
		}
	}()
	var vethIndex int
	do(t, h.Namespace, func() error {
		l, err := netlink.LinkByName("nleth0")
		if err == nil {
			vethIndex = l.Attrs().Index
		}
		return err
	})
	awaitChange := func(what string) {
		t.Helper()
		select {
		case <-changes:
		case <-time.After(10 * time.Second):
			t.Fatalf("no change reported after %s", what)
		}
	}

	ipOut(t, h.Namespace, "addr", "add", "198.51.100.5/32", "dev", "nleth0")
	awaitChange("adding an address")
	ipOut(t, h.Namespace, "addr", "del", "198.51.100.5/32", "dev", "nleth0")
	awaitChange("removing an address")
	ipOut(t, h.Namespace, "-6", "addr", "add", "2001:db8:ffff::99/128", "dev", "nleth0", "nodad")
	awaitChange("adding an IPv6 address")

	// Changes on the TUN, then a barrier on the veth that touches both subscriptions.
	if err := dev.SetAddresses(netip.MustParseAddr("100.64.0.2"), netip.MustParseAddr("fd00:2021:1111::2")); err != nil {
		t.Fatal(err)
	}
	if err := dev.SetRoutes([]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}); err != nil {
		t.Fatal(err)
	}
	ipOut(t, h.Namespace, "addr", "add", "198.51.100.6/32", "dev", "nleth0")
	ipOut(t, h.Namespace, "route", "add", "default", "via", "198.18.0.254", "dev", "nleth0")
	var tunAddr, tunRoute, barrierAddr, barrierRoute bool
	deadline := time.After(10 * time.Second)
	for !barrierAddr || !barrierRoute {
		select {
		case o := <-observed:
			switch {
			case o.index == dev.Index() && o.relevant:
				t.Errorf("a %s change on the TUN counted as a network change", o.kind)
			case o.index == dev.Index() && o.kind == "address":
				tunAddr = true
			case o.index == dev.Index() && o.kind == "route":
				tunRoute = true
			case o.index == vethIndex && o.relevant && o.kind == "address" && tunAddr:
				barrierAddr = true
			case o.index == vethIndex && o.relevant && o.kind == "route" && tunRoute:
				barrierRoute = true
			}
		case <-deadline:
			t.Fatalf("barrier not observed (tun address %v, tun route %v, barrier %v %v)", tunAddr, tunRoute, barrierAddr, barrierRoute)
		}
	}
	awaitChange("the barrier")
}

func TestLinkEvents(t *testing.T) {
	lab := netlab.New(t)
	h := lab.Host("c", lab.Internet())
	cfg := testConfig(t, DNSModeDisabled)
	dev := create(t, h.Namespace, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	evs, err := dev.LinkEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		for range evs {
		}
	}()
	expect := func(want LinkEvent) {
		t.Helper()
		select {
		case got := <-evs:
			if got != want {
				t.Fatalf("link event %+v, want %+v", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no link event, want %+v", want)
		}
	}
	expect(LinkEvent{Up: true, MTU: 1280})
	ipOut(t, h.Namespace, "link", "set", "dev", DefaultName, "mtu", "1400")
	expect(LinkEvent{Up: true, MTU: 1400})
	ipOut(t, h.Namespace, "link", "set", "dev", DefaultName, "down")
	expect(LinkEvent{Up: false, MTU: 1400})
	ipOut(t, h.Namespace, "link", "set", "dev", DefaultName, "up")
	expect(LinkEvent{Up: true, MTU: 1400})
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	expect(LinkEvent{Up: false, MTU: 1400})
}
