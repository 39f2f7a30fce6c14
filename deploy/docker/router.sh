#!/bin/sh
# router.sh — a NAT router of the compose lab (Dockerfile target `router`), the container twin of
# internal/netlab's routers (NATRouter) and of Firezone's scripts/router: it masquerades its LAN onto the
# internet, drops unsolicited inbound traffic, and optionally adds latency.
#
#   MASQUERADE_TYPE      empty: `masquerade`, endpoint-independent mapping (netlab NATEndpointIndependent)
#                        random: `masquerade random`, a new random port per flow, i.e. symmetric NAT
#                        (netlab NATSymmetric); fully-random and persistent are passed to nftables too
#   NETWORK_LATENCY_MS   round-trip time to add, in ms (default 0): netem delays the packets leaving each of
#                        the router's interfaces by half of it, so a flow through the router gets all of it
#
# The WAN is the interface of the IPv4 default route (Docker gives one only through the non-internal network);
# every other interface is a LAN, and its directly connected prefixes are masqueraded. Forwarding must already
# be on (compose `sysctls:`; /proc/sys is read-only in the container). Needs CAP_NET_ADMIN.
#
# The nftables table, `nft list table inet lab_router` in the container, is netlab's (network.go, ruleset):
# LAN-initiated flows and port forwards only; `counter drop comment "lab-unsolicited"` counts what it refused.
# The script sets everything up, prints a summary and waits for SIGTERM.
set -eu

die() {
	echo "lab-router: $*" >&2
	exit 1
}

masq=masquerade
case ${MASQUERADE_TYPE:-} in
"") ;;
random | fully-random | persistent | random,persistent | fully-random,persistent)
	masq="masquerade $MASQUERADE_TYPE"
	;;
*) die "MASQUERADE_TYPE=$MASQUERADE_TYPE: want empty (endpoint-independent) or random (symmetric)" ;;
esac

latency=${NETWORK_LATENCY_MS:-0}
case $latency in
"" | *[!0-9]*) die "NETWORK_LATENCY_MS=$latency: want a whole number of milliseconds" ;;
esac

# The WAN: "default via 198.18.0.254 dev eth0 ..." -> eth0.
wan=
# shellcheck disable=SC2046 # word splitting of the route is intended
set -- $(ip -4 route show default)
while [ "$#" -gt 1 ]; do
	if [ "$1" = dev ]; then
		wan=$2
		break
	fi
	shift
done
[ -n "$wan" ] || die "no IPv4 default route: the router must be on the (non-internal) internet network"

# The LANs and their prefixes (kernel routes of the interfaces' own addresses; link-local left out).
lans=
prefixes=
have6=
for path in /sys/class/net/*; do
	dev=${path##*/}
	case $dev in
	lo | "$wan") continue ;;
	esac
	p4=$(ip -4 route show dev "$dev" proto kernel scope link | cut -d' ' -f1)
	p6=$(ip -6 route show dev "$dev" proto kernel | cut -d' ' -f1 | grep -v '^fe80:' || true)
	[ -n "$p4$p6" ] || continue
	[ -z "$p6" ] || have6=1
	lans="$lans $dev"
	prefixes="$prefixes $p4 $p6"
done
[ -n "$lans" ] || die "no LAN interface with an address besides the WAN $wan"

[ "$(cat /proc/sys/net/ipv4/ip_forward)" = 1 ] ||
	die "net.ipv4.ip_forward is 0: set it with the container's sysctls"
if [ -n "$have6" ]; then
	[ "$(cat /proc/sys/net/ipv6/conf/all/forwarding)" = 1 ] ||
		die "net.ipv6.conf.all.forwarding is 0: set it with the container's sysctls"
fi

ruleset() {
	# Replace any table of an earlier start atomically: declare, delete, define.
	printf 'table inet lab_router\ndelete table inet lab_router\n'
	printf 'table inet lab_router {\n'
	printf '\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t}\n'
	printf '\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n'
	for p in $prefixes; do
		case $p in
		*:*) fam=ip6 ;;
		*) fam=ip ;;
		esac
		printf '\t\toifname "%s" %s saddr %s %s\n' "$wan" "$fam" "$p" "$masq"
	done
	printf '\t}\n'
	printf '\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n'
	printf '\t\tct state established,related accept\n'
	printf '\t\tiifname != "%s" accept\n' "$wan"
	printf '\t\tmeta l4proto { icmp, ipv6-icmp } accept\n'
	printf '\t\tcounter drop comment "lab-unsolicited"\n\t}\n'
	printf '\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n'
	printf '\t\tct state established,related accept\n'
	printf '\t\tiifname != "%s" accept\n' "$wan"
	printf '\t\tct status dnat accept\n'
	printf '\t\tcounter drop comment "lab-unsolicited"\n\t}\n'
	printf '}\n'
}
ruleset | nft -f - || die "loading the nftables ruleset failed"

for dev in $wan $lans; do
	if [ "$latency" -gt 0 ]; then
		tc qdisc replace dev "$dev" root netem delay "$((latency * 500))us" ||
			die "netem on $dev failed (does the host kernel have sch_netem?)"
	else
		tc qdisc del dev "$dev" root 2>/dev/null || true
	fi
done

echo "lab-router: WAN $wan, LAN$lans (prefixes$prefixes), $masq, ${latency} ms round trip added" >&2

trap 'exit 0' TERM INT
while :; do
	sleep 3600 &
	wait "$!" || true
done
