// Package tundev sets up the kernel TUN device of the client and the gateway (Linux, root) and the
// host configuration around it: tunnel addresses, routes in a dedicated routing table with
// fwmark policy rules, socket marking, DNS control through resolv.conf, crash recovery and netlink
// watches for roaming and link state.
//
// # API
//
//	dev, err := tundev.Create(tundev.Config{IPv4: v4, IPv6: v6, DNS: tundev.DNSConfig{Mode: tundev.DNSModeEtcResolvConf}})
//	defer dev.Close()                       // after the wireguard-go device is closed
//	wg := device.NewDevice(wrap(dev.TUN()), bind, logger)
//	_ = wg.Up()                             // unmonitored TUN: nobody else calls Up
//	_ = dev.SetRoutes(prefixes)             // whenever the resource set changes
//	_ = dev.DNS().Apply(sentinels, search)  // after init; Close restores
//	upstream, _ := dev.DNS().OriginalNameservers()
//	links, _ := dev.LinkEvents(ctx)         // Up/MTU changes of the TUN
//	changes, _ := tundev.Watch(ctx, tundev.WatchOptions{Exclude: dev.Name()}) // roaming
//	pionNet, _ := tundev.MarkedNet(dev.Fwmark()) // node.Config.Net: the node's sockets bypass the tunnel
//
// Create, Cleanup and Watch work in the network namespace of the calling OS thread (the daemon's
// only one in production; a thread locked into a test namespace in tests); the Device and the
// watchers keep using that namespace from any goroutine.
//
// # The TUN
//
// The descriptor is opened with IFF_TUN|IFF_NO_PI|IFF_VNET_HDR and handed to wireguard-go's
// tun.CreateUnmonitoredTUNFromFD, which, seeing IFF_VNET_HDR, turns on TUNSETOFFLOAD with
// checksum + TSO4/TSO6 (and USO4/USO6 from Linux 6.2): reads and writes are batched
// (BatchSize = conn.IdealBatchSize) with GSO/GRO, as with tun.CreateTUN. Unlike tun.CreateTUN it
// starts no goroutine: tun.CreateTUN writes to the descriptor every second to detect link state
// (about 300 wake-ups a minute, design.md "node"), and listens to netlink for the rest. Here the
// daemon calls device.Up itself and gets link and MTU changes from Device.LinkEvents, a netlink
// subscription that costs nothing while nothing changes.
//
// Create disables IPv6 link-local address generation on the TUN, sets the MTU (1280), adds the
// tunnel addresses as /32 and /128 (IPv6 without DAD), and brings the link up. If IPv6 is disabled
// on the host, the device runs IPv4-only (HasIPv6).
//
// # Routing
//
// Routes through the TUN (SetRoutes) live in tables of their own, never in main: Config.Table for
// resources and Config.Table+1 for default routes (the Internet resource). Three policy rules per
// address family steer traffic there, like wg-quick and Firezone on Linux:
//
//	P    not fwmark MARK lookup TABLE           (resources)
//	P+1  lookup main suppress_prefixlength 0    (local networks)
//	P+2  not fwmark MARK lookup TABLE+1         (the Internet resource)
//
// The daemon marks its own sockets with SO_MARK=MARK (MarkControl, MarkConn, MarkedNet): "not
// fwmark" makes its packets skip both tunnel lookups, so connections to relays, the portal and
// peers keep using the physical network even when a resource covers their address or the
// Internet resource routes 0.0.0.0/0 and ::/0 through the tunnel.
//
// Rule P+1 is wg-quick's `suppress_prefixlength 0` rule: main is consulted with its default route
// suppressed, so the routes of directly connected and otherwise configured networks beat the
// tunnel's default route (LAN printers, the local DNS server stay reachable with the Internet
// resource on); only what would have taken main's default route goes into the tunnel. wg-quick
// keeps its non-default AllowedIPs in main, where they compete with local routes by prefix length;
// we keep every tunnel route in our tables, and rule P comes first, so a resource's route wins
// over a local network's, as in Firezone (its "user" table at priority 100, before its link-scope
// and Internet tables). Firezone copies main's link-scope routes into a table of its own to get
// rule P+1's effect; the suppress rule gives the same, for every non-default route of main,
// without keeping a copy in sync. (One table with `suppress_prefixlength 0` on rule P would also
// do, but vishvananda/netlink v1.3.1 drops that attribute for tables numbered 256 and above.)
//
// Strict reverse-path filtering (rp_filter=1) on the physical interface would drop the replies to
// marked sockets whose peer's address routes into the tunnel (the Internet resource, or a resource
// covering a relay): the reverse-path lookup of a reply carries no mark. The loose mode (2) most
// distributions use, or 0, is fine. wg-quick works around it with nftables connmark rules and
// src_valid_mark; we do not.
//
// # DNS
//
// DNSControl (Device.DNS, or NewDNSControl on its own) implements the modes "etc-resolv-conf" and
// "disabled". Apply backs resolv.conf up (atomically) and rewrites it in place, because it may be a
// bind mount (Docker, `ip netns exec`); the first line is a header that marks the file as ours.
// Restore writes the original back in place and removes the backup, unless the file lost our
// header (someone rewrote it since): then the newer file is kept. A resolv.conf that is a symbolic
// link (systemd-resolved's stub, resolvconf) is refused with ErrResolvConfSymlink, as Firezone's
// etc-resolv-conf mode does: its owner would overwrite our change, and writing through the link
// would edit that program's private file. OriginalNameservers reads the backup if there is one,
// else resolv.conf; the client uses them as upstream resolvers.
//
// # Crash recovery
//
// Everything has a deterministic name: the device name, the tables, the rule priorities and the
// backup path. Cleanup(cfg), which Create calls first, removes a leftover persistent TUN of that
// name, the rules at our priorities, all routes of our table and restores resolv.conf from a
// leftover backup, logging each at INFO; no state file is needed. After SIGKILL the kernel has
// already destroyed the (non-persistent) TUN and the routes through it; the rules and the DNS
// change are what remain. A non-persistent TUN of our name means a live process holds it (another
// instance): Create and Cleanup then return ErrDeviceBusy and touch nothing. The persistence flag
// comes from IFLA_TUN_PERSIST (Linux 4.17 and later).
//
// # Watching the network
//
// Watch subscribes to address and route notifications (RTNLGRP_IPV4/IPV6_IFADDR and _ROUTE) and
// reports, debounced (150 ms), any address change and any default-route change outside the TUN:
// the client's cue to roam. Device.LinkEvents subscribes to link notifications for the TUN's
// running flag and MTU. Both are event-driven (no polling, no periodic wake-ups); their
// goroutines are owned by the ctx passed in, and their channels close once those goroutines have
// exited. A subscription the kernel breaks (ENOBUFS after a burst) is renewed and reported.
//
// # Other systems
//
// Everything except DNSControl returns an error wrapping errors.ErrUnsupported on systems other
// than Linux; the package compiles everywhere.
package tundev
