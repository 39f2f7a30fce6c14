#!/bin/sh
# lab-entrypoint.sh — entrypoint of the client and gateway containers in the compose NAT lab only
# (docker-compose.yml: `entrypoint: ["/usr/local/bin/lab-entrypoint", "/usr/local/bin/snowgate-…"]`).
#
# A site's container sits on an internal Docker network, which has no default route; its router container
# (deploy/docker/router.sh) is the way out. This script points the default routes at the router and then
# replaces itself with the daemon, which keeps PID 1 and gets the container's signals:
#
#   ROUTER_IP4   IPv4 address of the site's router on the LAN (empty or unset: leave IPv4 routing alone)
#   ROUTER_IP6   IPv6 address of the site's router on the LAN (empty or unset: leave IPv6 routing alone)
#
# The variables are removed from the environment before the daemon starts: the binaries do not read them, and
# go test ./deploy/ checks that every variable compose gives a service is read by its binary or by this script.
# Needs CAP_NET_ADMIN (the daemons need it anyway for their TUN device).
set -eu

if [ "$#" -eq 0 ]; then
	echo "lab-entrypoint: usage: lab-entrypoint PROGRAM [ARG...]" >&2
	exit 2
fi

if [ -n "${ROUTER_IP4:-}" ]; then
	ip -4 route replace default via "$ROUTER_IP4"
	echo "lab-entrypoint: default route via $ROUTER_IP4" >&2
fi
if [ -n "${ROUTER_IP6:-}" ]; then
	ip -6 route replace default via "$ROUTER_IP6"
	echo "lab-entrypoint: default route via $ROUTER_IP6" >&2
fi
unset ROUTER_IP4 ROUTER_IP6

exec "$@"
