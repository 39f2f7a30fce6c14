//go:build linux

package tundev

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/snowgate/snowgate/internal/netlab"
)

var (
	tunV4 = netip.MustParseAddr("100.64.0.1")
	tunV6 = netip.MustParseAddr("fd00:2021:1111::1")
)

// originalResolv is the resolv.conf content the DNS tests start from.
const originalResolv = "# the system's own\nnameserver 192.0.2.53\nnameserver 2001:db8::53\nsearch lan.example\n"

// testConfig returns a Config with the tunnel addresses and DNS files in a temporary directory
// (never the real /etc/resolv.conf).
func testConfig(t *testing.T, mode DNSMode) Config {
	t.Helper()
	dir := t.TempDir()
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte(originalResolv), 0o644); err != nil {
		t.Fatal(err)
	}
	return Config{
		IPv4:   tunV4,
		IPv6:   tunV6,
		DNS:    DNSConfig{Mode: mode, ResolvConfPath: resolv},
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// testWriter sends log output to t.Log, so it shows only for failed tests (or -v).
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// do runs f in the namespace and fails the test on error.
func do(t *testing.T, ns *netlab.Namespace, f func() error) {
	t.Helper()
	if err := ns.Do(f); err != nil {
		t.Fatal(err)
	}
}

// create makes a Device inside ns and closes it at the end of the test.
func create(t *testing.T, ns *netlab.Namespace, cfg Config) *Device {
	t.Helper()
	var dev *Device
	do(t, ns, func() (err error) {
		dev, err = Create(cfg)
		return err
	})
	t.Cleanup(func() {
		if err := dev.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return dev
}

// nsState is what the tests check after Create, Close and Cleanup.
type nsState struct {
	link   netlink.Link // nil if the TUN does not exist
	rules  []netlink.Rule
	routes []netlink.Route // of the config's tables
}

func readState(t *testing.T, ns *netlab.Namespace, cfg Config) nsState {
	t.Helper()
	cfg = cfg.withDefaults()
	var st nsState
	do(t, ns, func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		defer h.Close()
		if l, err := h.LinkByName(cfg.Name); err == nil {
			st.link = l
		} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
			return err
		}
		for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
			rules, err := h.RuleList(fam)
			if err != nil {
				return err
			}
			for _, r := range rules {
				if r.Priority >= cfg.RulePriority && r.Priority <= cfg.RulePriority+2 {
					st.rules = append(st.rules, r)
				}
			}
		}
		st.routes, err = ourRoutes(h, cfg)
		return err
	})
	return st
}

// assertClean fails unless nothing of cfg is left in ns.
func assertClean(t *testing.T, ns *netlab.Namespace, cfg Config) {
	t.Helper()
	st := readState(t, ns, cfg)
	if st.link != nil {
		t.Errorf("link %s still exists (%s)", st.link.Attrs().Name, st.link.Type())
	}
	for _, r := range st.rules {
		t.Errorf("rule left: %s", describeRule(&r))
	}
	for _, r := range st.routes {
		t.Errorf("route left in table %d: %s", r.Table, r)
	}
}

// ipOut runs `ip args...` in ns and returns its output.
func ipOut(t *testing.T, ns *netlab.Namespace, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ns.Exec(ctx, "ip", args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// tunReader reads packets from a TUN in a goroutine until the TUN is closed.
type tunReader struct {
	pkts chan []byte
	done chan struct{}
}

const tunOffset = 16 // room for the virtio-net header wireguard-go writes in front of a packet

func startReader(t *testing.T, dev tun.Device) *tunReader {
	r := &tunReader{pkts: make(chan []byte, 256), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		n := dev.BatchSize()
		bufs := make([][]byte, n)
		for i := range bufs {
			bufs[i] = make([]byte, tunOffset+65535)
		}
		sizes := make([]int, n)
		for {
			cnt, err := dev.Read(bufs, sizes, tunOffset)
			if err != nil {
				return
			}
			for i := range cnt {
				p := append([]byte(nil), bufs[i][tunOffset:tunOffset+sizes[i]]...)
				select {
				case r.pkts <- p:
				default: // a test that stopped reading does not block the reader
				}
			}
		}
	}()
	t.Cleanup(func() {
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Error("TUN reader did not stop after the device was closed")
		}
	})
	return r
}

// await returns the first packet that satisfies match, failing after a generous deadline.
func (r *tunReader) await(t *testing.T, what string, match func([]byte) bool) []byte {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case p := <-r.pkts:
			if match(p) {
				return p
			}
		case <-deadline:
			t.Fatalf("no %s read from the TUN", what)
		}
	}
}

// writeTUN writes one IP packet into the TUN (as if it came out of the tunnel).
func writeTUN(t *testing.T, dev tun.Device, pkt []byte) {
	t.Helper()
	buf := make([]byte, tunOffset+len(pkt))
	copy(buf[tunOffset:], pkt)
	if _, err := dev.Write([][]byte{buf}, tunOffset); err != nil {
		t.Fatalf("write to TUN: %v", err)
	}
}

// icmpEcho builds an ICMP (IPv4) or ICMPv6 echo request or reply from src to dst.
func icmpEcho(src, dst netip.Addr, reply bool, id, seq uint16, payload []byte) []byte {
	if src.Is4() {
		typ := byte(8)
		if reply {
			typ = 0
		}
		icmp := make([]byte, 8+len(payload))
		icmp[0] = typ
		binary.BigEndian.PutUint16(icmp[4:], id)
		binary.BigEndian.PutUint16(icmp[6:], seq)
		copy(icmp[8:], payload)
		binary.BigEndian.PutUint16(icmp[2:], checksum(icmp, 0))
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(icmp)))
		ip[8] = 64
		ip[9] = 1
		s, d := src.As4(), dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		binary.BigEndian.PutUint16(ip[10:], checksum(ip, 0))
		return append(ip, icmp...)
	}
	typ := byte(128)
	if reply {
		typ = 129
	}
	icmp := make([]byte, 8+len(payload))
	icmp[0] = typ
	binary.BigEndian.PutUint16(icmp[4:], id)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	copy(icmp[8:], payload)
	s, d := src.As16(), dst.As16()
	var pseudo uint32
	for i := 0; i < 16; i += 2 {
		pseudo += uint32(binary.BigEndian.Uint16(s[i:])) + uint32(binary.BigEndian.Uint16(d[i:]))
	}
	pseudo += uint32(len(icmp)) + 58
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp, pseudo))
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(icmp)))
	ip[6] = 58
	ip[7] = 64
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return append(ip, icmp...)
}

func checksum(b []byte, initial uint32) uint16 {
	sum := initial
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// logBuffer collects a text log for assertions; it is safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// routeMonitor records the kernel's route notifications for a set of tables, so tests can assert
// which routes a call added and removed (not only the resulting tables).
type routeMonitor struct {
	ns      *netlab.Namespace
	tables  []int
	updates chan netlink.RouteUpdate
	n       int
}

// barrierTable holds the throw-away routes expectChanges uses to know it has seen everything.
const barrierTable = 4242

func startRouteMonitor(t *testing.T, ns *netlab.Namespace, tables ...int) *routeMonitor {
	t.Helper()
	m := &routeMonitor{ns: ns, tables: tables, updates: make(chan netlink.RouteUpdate, 1024)}
	done := make(chan struct{})
	do(t, ns, func() error {
		return netlink.RouteSubscribeWithOptions(m.updates, done, netlink.RouteSubscribeOptions{})
	})
	t.Cleanup(func() {
		close(done)
		for range m.updates {
		}
	})
	return m
}

// expectChanges asserts that the table changed by exactly want ("+prefix" added, "-prefix"
// removed, in any order) since the previous call. A barrier route added to and deleted from
// another table marks the end: notifications arrive in order on one socket.
func (m *routeMonitor) expectChanges(t *testing.T, want ...string) {
	t.Helper()
	m.n++
	barrier := netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(m.n)}), 32)
	ipOut(t, m.ns, "route", "add", "blackhole", barrier.String(), "table", fmt.Sprint(barrierTable))
	ipOut(t, m.ns, "route", "del", "blackhole", barrier.String(), "table", fmt.Sprint(barrierTable))
	var got []string
	deadline := time.After(10 * time.Second)
	for {
		select {
		case u, ok := <-m.updates:
			if !ok {
				t.Fatal("route monitor subscription ended")
			}
			p, _ := routePrefix(&u.Route)
			if u.Table == barrierTable && u.Type == unix.RTM_DELROUTE && p == barrier {
				slices.Sort(got)
				want = slices.Clone(want)
				slices.Sort(want)
				if !slices.Equal(got, want) {
					t.Fatalf("tables %v changed by %v, want %v", m.tables, got, want)
				}
				return
			}
			if !slices.Contains(m.tables, u.Table) {
				continue
			}
			sign := "+"
			if u.Type == unix.RTM_DELROUTE {
				sign = "-"
			}
			got = append(got, sign+p.String())
		case <-deadline:
			t.Fatalf("route monitor: barrier %s not seen; changes so far %v", barrier, got)
		}
	}
}
