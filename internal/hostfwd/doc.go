// Package hostfwd sets up the gateway host's kernel forwarding for kernel-TUN mode (Linux, root):
// IP forwarding and an nftables table that masquerades tunnel traffic leaving for resources.
//
// # API
//
//	fwd, err := hostfwd.Enable(hostfwd.Config{TunName: dev.Name()}) // after tundev.Create
//	defer fwd.Close()                                              // table gone, sysctls restored
//	_ = hostfwd.Cleanup(cfg)                                       // (Enable calls it) leftovers of a killed run
//
// Enable works in the network namespace of the calling OS thread, and Close acts on that same
// namespace from any thread (the nftables socket and the /proc/sys files stay bound to it).
//
// # What Enable changes
//
// Sysctls: net.ipv4.ip_forward=1 and net.ipv6.conf.all.forwarding=1 (the latter skipped with a
// warning when the kernel has no IPv6). Close writes back the values Enable found. Note that
// all.forwarding=1 sets forwarding on every interface, and an IPv6 router ignores router
// advertisements unless accept_ra=2: a gateway host that configures its uplink by SLAAC needs
// net.ipv6.conf.<uplink>.accept_ra=2 (Docker and Firezone's install scripts have the same
// caveat). Restoring all.forwarding=0 also resets the per-interface values.
//
// One nftables table, family inet, named "snowgate-gateway" (Config.TableName), as `nft list
// table inet snowgate-gateway` shows it:
//
//	table inet snowgate-gateway {
//		chain forward {
//			type filter hook forward priority filter; policy accept;
//			iifname "tun-snowgate" accept comment "snowgate prior sysctls: net/ipv4/ip_forward=0 ..."
//			oifname "tun-snowgate" ct state established,related accept
//			oifname "tun-snowgate" counter drop
//		}
//		chain postrouting {
//			type nat hook postrouting priority srcnat; policy accept;
//			ip saddr 100.64.0.0/11 oifname != "tun-snowgate" masquerade
//			ip6 saddr fd00:2021:1111::/107 oifname != "tun-snowgate" masquerade
//		}
//	}
//
// Traffic from the tunnel is forwarded and, when it leaves through any other interface (or only
// through Config.OutboundInterfaces, if given), masqueraded to that interface's address, so
// resources need no route back to the tunnel ranges (Firezone's gateway does the same with
// iptables MASQUERADE rules in its install scripts). Towards the TUN only replies pass (conntrack
// established/related, which includes ICMP errors): nothing outside may open a flow into the
// tunnel; the drop rule counts what it refused. The forward chain's policy is accept, so the table
// never affects traffic that does not touch the TUN.
//
// An accept in our table cannot override a drop in another one (each base chain on a hook
// decides on its own): on a host whose firewall drops forwarded packets by default (Docker sets
// the iptables FORWARD policy to DROP), the administrator must also allow traffic from and to the
// TUN there, as Firezone's scripts do with `iptables -I FORWARD -i tun-firezone -j ACCEPT` and
// `-o tun-firezone`.
//
// # Crash recovery
//
// The table's name is fixed, and the sysctl values Enable found are stored in the comment of the
// forward chain's first rule, in the kernel. After a SIGKILL, Cleanup (which Enable calls first)
// reads them back, restores the sysctls, and deletes the table, logging each step at INFO; no
// state file is needed. One gateway per network namespace: a second Enable takes the table over.
//
// # Implementation choice
//
// The ruleset is built with github.com/google/nftables over netlink rather than by running `nft`:
// no dependency on the nft binary at run time, one atomic batch per change, and errors as values.
// (Tests use `nft list` to see what an administrator would see.)
//
// # Other systems
//
// Enable and Cleanup return an error wrapping errors.ErrUnsupported on systems other than Linux;
// the package compiles everywhere.
package hostfwd
