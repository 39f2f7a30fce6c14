//go:build linux

package tundev

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/snowgate/snowgate/internal/telemetry"
)

// cloneDevice is the TUN clone device.
const cloneDevice = "/dev/net/tun"

// in6AddrGenModeNone is IN6_ADDR_GEN_MODE_NONE: no automatic IPv6 link-local address.
const in6AddrGenModeNone = 1

// Device is a kernel TUN device with its addresses, policy rules, routes and (optionally) DNS
// control. Create it with Create; Close undoes everything. Its methods are safe for concurrent use.
//
// All netlink operations run in the network namespace of the OS thread that called Create, even
// when later methods are called from other threads.
type Device struct {
	cfg Config
	log *slog.Logger
	dns *DNSControl
	ns  netns.NsHandle
	h   *netlink.Handle
	tun tun.Device

	index int

	mu     sync.Mutex
	closed bool
	v4, v6 netip.Addr // tunnel addresses currently configured
	// wantRoutes and wantExcludes are the last SetRoutesExcluding's: routes of a family the TUN had no
	// address for were skipped, and SetAddresses adds them once it has one.
	wantRoutes, wantExcludes []netip.Prefix
}

// Create sets up the TUN described by cfg in the network namespace of the calling OS thread: it
// first runs Cleanup (removing what a killed previous run left behind), then opens /dev/net/tun with
// IFF_TUN|IFF_NO_PI|IFF_VNET_HDR, wraps the descriptor with wireguard-go's
// tun.CreateUnmonitoredTUNFromFD (which turns on the TCP/UDP segmentation offloads the kernel
// supports), disables IPv6 link-local address generation, sets the MTU, adds the tunnel addresses
// (/32 and /128), brings the link up and installs the policy rules (see the package documentation).
// Routes are added later with SetRoutes. On failure everything done so far is undone.
//
// IPv6 is optional: if the kernel refuses the IPv6 address because IPv6 is disabled
// (disable_ipv6=1), Create logs a warning and continues without IPv6 (HasIPv6 reports false).
func Create(cfg Config) (*Device, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	dns, err := NewDNSControl(cfg.DNS, cfg.Logger)
	if err != nil {
		return nil, err
	}
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("tundev: create: current network namespace: %w", err)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("tundev: create: netlink: %w", err)
	}
	d := &Device{cfg: cfg, log: cfg.Logger.With("tun", cfg.Name), dns: dns, ns: ns, h: h}
	if err := cleanup(cfg, h); err != nil {
		h.Close()
		ns.Close()
		return nil, err
	}
	if err := d.setUp(); err != nil {
		return nil, errors.Join(err, d.Close())
	}
	d.log.Info("TUN device ready", "index", d.index, "mtu", cfg.MTU, "ipv4", d.v4, "ipv6", d.v6,
		"batch_size", d.tun.BatchSize(), "table", cfg.Table, "fwmark", fmt.Sprintf("%#x", cfg.Fwmark))
	return d, nil
}

func (d *Device) setUp() error {
	fd, err := openTUN(d.cfg.Name)
	if err != nil {
		return err
	}
	t, name, err := tun.CreateUnmonitoredTUNFromFD(fd)
	if err != nil {
		unix.Close(fd)
		return fmt.Errorf("tundev: create: wrap TUN: %w", err)
	}
	d.tun = t
	if name != d.cfg.Name {
		return fmt.Errorf("tundev: create: kernel named the TUN %q, want %q", name, d.cfg.Name)
	}
	link, err := d.h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("tundev: create: look up %s: %w", name, err)
	}
	d.index = link.Attrs().Index
	if err := d.h.LinkSetIP6AddrGenMode(link, in6AddrGenModeNone); err != nil {
		d.log.Debug("cannot disable IPv6 link-local address generation", telemetry.Err(err))
	}
	if err := d.h.LinkSetMTU(link, d.cfg.MTU); err != nil {
		return fmt.Errorf("tundev: create: set MTU %d: %w", d.cfg.MTU, err)
	}
	if err := d.setAddresses(link, d.cfg.IPv4, d.cfg.IPv6); err != nil {
		return err
	}
	if err := d.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("tundev: create: set %s up: %w", name, err)
	}
	for _, r := range policyRules(d.cfg) {
		if !d.hasFamily(r.Family) {
			continue
		}
		if err := d.h.RuleAdd(r); err != nil {
			return fmt.Errorf("tundev: create: add rule %s: %w", describeRule(r), err)
		}
	}
	return nil
}

// openTUN opens the clone device and attaches a TUN named name with the flags wireguard-go's
// offload support needs; tun.CreateUnmonitoredTUNFromFD makes the descriptor non-blocking.
func openTUN(name string) (int, error) {
	fd, err := unix.Open(cloneDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("tundev: create: open %s: %w", cloneDevice, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("tundev: create: %w", err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EBUSY) {
			return -1, fmt.Errorf("tundev: create: TUNSETIFF %s: %w: %w", name, ErrDeviceBusy, err)
		}
		return -1, fmt.Errorf("tundev: create: TUNSETIFF %s: %w", name, err)
	}
	return fd, nil
}

// hasFamily reports whether the TUN has a tunnel address of the family (unix.AF_INET/AF_INET6).
func (d *Device) hasFamily(family int) bool {
	if family == unix.AF_INET {
		return d.v4.IsValid()
	}
	return d.v6.IsValid()
}

// TUN returns the wireguard-go view of the device, for device.NewDevice (through the TUN wrapper).
// It is unmonitored: its Events channel never reports anything, so the daemon calls device.Up
// itself and learns of link and MTU changes from LinkEvents. Batched reads and writes with
// virtio-net headers are on (BatchSize > 1) when the kernel accepted the TCP offloads; UDP
// segmentation offload is added on Linux 6.2 and later.
func (d *Device) TUN() tun.Device { return d.tun }

// Name returns the interface name.
func (d *Device) Name() string { return d.cfg.Name }

// Index returns the interface index.
func (d *Device) Index() int { return d.index }

// MTU returns the MTU the device was created with.
func (d *Device) MTU() int { return d.cfg.MTU }

// Fwmark returns the mark that keeps a socket out of the tunnel (see MarkControl, MarkedNet).
func (d *Device) Fwmark() uint32 { return d.cfg.Fwmark }

// DNS returns the device's DNS control. Close restores what it applied.
func (d *Device) DNS() *DNSControl { return d.dns }

// Addresses returns the tunnel addresses currently configured (invalid for a family without one).
func (d *Device) Addresses() (v4, v6 netip.Addr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.v4, d.v6
}

// HasIPv6 reports whether the device carries an IPv6 tunnel address.
func (d *Device) HasIPv6() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.v6.IsValid()
}

// SetAddresses replaces the tunnel addresses (the portal may assign new ones on reconnect). An
// invalid address removes that family's address. Policy rules are added or removed with the
// family.
func (d *Device) SetAddresses(v4, v6 netip.Addr) error {
	if v4.IsValid() && !v4.Is4() || v6.IsValid() && (!v6.Is6() || v6.Is4In6()) {
		return fmt.Errorf("tundev: set addresses: %s/%s: wrong family", v4, v6)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	link, err := d.h.LinkByIndex(d.index)
	if err != nil {
		return fmt.Errorf("tundev: set addresses: look up link: %w", err)
	}
	had4, had6 := d.v4.IsValid(), d.v6.IsValid()
	if err := d.setAddresses(link, v4, v6); err != nil {
		return err
	}
	var errs []error
	for _, r := range policyRules(d.cfg) {
		had, has := had4, d.v4.IsValid()
		if r.Family == unix.AF_INET6 {
			had, has = had6, d.v6.IsValid()
		}
		switch {
		case has && !had:
			if err := d.h.RuleAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
				errs = append(errs, fmt.Errorf("tundev: add rule %s: %w", describeRule(r), err))
			}
		case had && !has:
			if err := d.h.RuleDel(r); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("tundev: delete rule %s: %w", describeRule(r), err))
			}
		}
	}
	// Routes of a family that just got its address were skipped until now.
	if (d.v4.IsValid() && !had4) || (d.v6.IsValid() && !had6) {
		want := map[routeKey]bool{}
		for _, p := range d.wantRoutes {
			want[routeKey{p.Masked(), false}] = true
		}
		for _, p := range d.wantExcludes {
			want[routeKey{p.Masked(), true}] = true
		}
		if err := d.applyRoutesLocked(want); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// setAddresses makes the link's global addresses exactly v4/32 and v6/128 and records them in
// d.v4/d.v6. Callers hold d.mu or own d exclusively.
func (d *Device) setAddresses(link netlink.Link, v4, v6 netip.Addr) error {
	current, err := d.h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("tundev: list addresses: %w", err)
	}
	want := map[netip.Prefix]bool{}
	if v4.IsValid() {
		want[netip.PrefixFrom(v4, 32)] = true
	}
	if v6.IsValid() {
		want[netip.PrefixFrom(v6, 128)] = true
	}
	have := map[netip.Prefix]bool{}
	for _, a := range current {
		p, ok := prefixOf(a.IPNet)
		if !ok || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		if want[p] {
			have[p] = true
			continue
		}
		if err := d.h.AddrDel(link, &a); err != nil && !isNotFound(err) {
			return fmt.Errorf("tundev: delete address %s: %w", p, err)
		}
		d.log.Debug("removed tunnel address", "addr", p)
	}
	d.v4 = netip.Addr{}
	if v4.IsValid() {
		p := netip.PrefixFrom(v4, 32)
		if !have[p] {
			if err := d.h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(p)}); err != nil {
				return fmt.Errorf("tundev: add address %s: %w", p, err)
			}
		}
		d.v4 = v4
	}
	d.v6 = netip.Addr{}
	if v6.IsValid() {
		p := netip.PrefixFrom(v6, 128)
		if !have[p] {
			err := d.h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(p), Flags: unix.IFA_F_NODAD})
			switch {
			case errors.Is(err, unix.EACCES), errors.Is(err, unix.EAFNOSUPPORT), errors.Is(err, unix.EOPNOTSUPP):
				d.log.Warn("IPv6 is disabled on the TUN; continuing without IPv6", "addr", p, telemetry.Err(err))
				return nil
			case err != nil:
				return fmt.Errorf("tundev: add address %s: %w", p, err)
			}
		}
		d.v6 = v6
	}
	return nil
}

// SetRoutes makes the set of routes through the TUN exactly prefixes: routes missing from the
// device's routing tables are added, routes no longer wanted are deleted, the rest is left alone.
// The kernel's table is the reference (not a remembered copy), so SetRoutes also repairs routes
// the kernel dropped (e.g. when the link went down) and is idempotent. Prefixes are masked
// (192.0.2.7/24 means 192.0.2.0/24) and de-duplicated; 0.0.0.0/0 and ::/0 (the Internet resource)
// are allowed. Prefixes of a family the device has no address for are skipped with a DEBUG log.
func (d *Device) SetRoutes(prefixes []netip.Prefix) error {
	return d.SetRoutesExcluding(prefixes, nil)
}

// routeKey names one route of the device's tables: a route through the TUN, or an exclusion.
type routeKey struct {
	p     netip.Prefix
	throw bool
}

// SetRoutesExcluding is SetRoutes with exclusions: every prefix of excludes gets a "throw" route in the
// default routes' table, so that traffic to it falls through to the main table (the physical network)
// even while 0.0.0.0/0 or ::/0 goes through the TUN: the portal's and the relays' addresses stay outside
// the tunnel for every program, not only for the daemon's marked sockets. Exclusions only override the
// default routes; a more specific resource route still wins.
func (d *Device) SetRoutesExcluding(prefixes, excludes []netip.Prefix) error {
	want := map[routeKey]bool{}
	for i, list := range [][]netip.Prefix{prefixes, excludes} {
		for _, p := range list {
			if !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
				return fmt.Errorf("tundev: set routes: invalid prefix %v", p)
			}
			want[routeKey{p.Masked(), i == 1}] = true
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	d.wantRoutes, d.wantExcludes = slices.Clone(prefixes), slices.Clone(excludes)
	return d.applyRoutesLocked(want)
}

// applyRoutesLocked makes the device's tables hold exactly want. d.mu is held.
func (d *Device) applyRoutesLocked(want map[routeKey]bool) error {
	current, other, err := d.routes()
	if err != nil {
		return err
	}
	var errs []error
	added, removed := 0, 0
	for _, r := range other {
		if err := d.h.RouteDel(r); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("tundev: delete stale route %v: %w", r.Dst, err))
		}
	}
	for k, r := range current {
		if want[k] {
			continue
		}
		if err := d.h.RouteDel(r); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("tundev: delete route %s: %w", k.p, err))
			continue
		}
		removed++
	}
	keys := make([]routeKey, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b routeKey) int {
		if c := comparePrefix(a.p, b.p); c != 0 {
			return c
		}
		if a.throw == b.throw {
			return 0
		}
		if a.throw {
			return 1
		}
		return -1
	})
	for _, k := range keys {
		if _, ok := current[k]; ok {
			continue
		}
		if !d.hasFamily(familyOf(k.p.Addr())) {
			d.log.Debug("skipping route: the TUN has no address of its family", "route", k.p, "exclude", k.throw)
			continue
		}
		r := d.route(k.p)
		if k.throw {
			r = d.throwRoute(k.p)
		}
		if err := d.h.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("tundev: add route %s: %w", k.p, err))
			continue
		}
		added++
	}
	if added > 0 || removed > 0 {
		d.log.Debug("routes updated", "added", added, "removed", removed, "total", len(want))
	}
	return errors.Join(errs...)
}

// Routes returns the prefixes currently routed through the TUN (read from the kernel), sorted.
func (d *Device) Routes() ([]netip.Prefix, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	current, _, err := d.routes()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Prefix, 0, len(current))
	for k := range current {
		if !k.throw {
			out = append(out, k.p)
		}
	}
	slices.SortFunc(out, comparePrefix)
	return out, nil
}

// routes lists the routes of the device's two tables that SetRoutesExcluding installs, by key; anything
// else found there (stale or foreign) is in other, to be deleted.
func (d *Device) routes() (map[routeKey]*netlink.Route, []*netlink.Route, error) {
	list, err := ourRoutes(d.h, d.cfg)
	if err != nil {
		return nil, nil, err
	}
	var other []*netlink.Route
	out := make(map[routeKey]*netlink.Route, len(list))
	for i := range list {
		r := &list[i]
		p, ok := routePrefix(r)
		if !ok {
			continue
		}
		switch {
		case r.Type == unix.RTN_THROW && r.Table == internetTable(d.cfg):
			out[routeKey{p, true}] = r
		case d.isRouteFor(p, r):
			out[routeKey{p, false}] = r
		default:
			other = append(other, r)
		}
	}
	return out, other, nil
}

// tableFor returns the table a route to p belongs in: default routes have their own.
func (d *Device) tableFor(p netip.Prefix) int {
	if p.Bits() == 0 {
		return internetTable(d.cfg)
	}
	return d.cfg.Table
}

// isRouteFor reports whether a listed route is the one SetRoutes would install for p.
func (d *Device) isRouteFor(p netip.Prefix, r *netlink.Route) bool {
	return r.LinkIndex == d.index && r.Table == d.tableFor(p)
}

// throwRoute is the exclusion of p from the default routes' table.
func (d *Device) throwRoute(p netip.Prefix) *netlink.Route {
	return &netlink.Route{
		Dst:      ipNet(p),
		Table:    internetTable(d.cfg),
		Type:     unix.RTN_THROW,
		Protocol: unix.RTPROT_STATIC,
		Family:   familyOf(p.Addr()),
	}
}

func (d *Device) route(p netip.Prefix) *netlink.Route {
	return &netlink.Route{
		LinkIndex: d.index,
		Dst:       ipNet(p),
		Table:     d.tableFor(p),
		Protocol:  unix.RTPROT_STATIC,
		Family:    familyOf(p.Addr()),
	}
}

// Close restores the DNS configuration (if applied), deletes the policy rules and the routes of the
// device's tables, and closes the TUN, which destroys the interface with its addresses. It is
// idempotent. Close the wireguard-go device first (it closes the same tun.Device; a second Close of
// it is harmless).
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	if err := d.dns.Restore(); err != nil {
		errs = append(errs, err)
	}
	for _, r := range policyRules(d.cfg) {
		if err := d.h.RuleDel(r); err != nil && !isNotFound(err) && !errors.Is(err, unix.EAFNOSUPPORT) {
			errs = append(errs, fmt.Errorf("tundev: close: delete rule %s: %w", describeRule(r), err))
		}
	}
	if routes, err := ourRoutes(d.h, d.cfg); err != nil {
		errs = append(errs, fmt.Errorf("tundev: close: list routes: %w", err))
	} else {
		for i := range routes {
			if err := d.h.RouteDel(&routes[i]); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("tundev: close: delete route: %w", err))
			}
		}
	}
	if d.tun != nil {
		if err := d.tun.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("tundev: close TUN: %w", err))
		}
	}
	// A non-persistent TUN disappears with its last descriptor; delete it explicitly in case the
	// descriptor was shared (e.g. inherited by a child process).
	if link, err := d.h.LinkByName(d.cfg.Name); err == nil && link.Attrs().Index == d.index {
		if err := d.h.LinkDel(link); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("tundev: close: delete link: %w", err))
		}
	}
	d.h.Close()
	d.ns.Close()
	if len(errs) == 0 {
		d.log.Info("TUN device removed")
	}
	return errors.Join(errs...)
}
