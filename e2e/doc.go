// Package e2e holds snowgate's end-to-end scenarios: the binaries (portal, relays, gateway, client) run as
// separate processes, started the way a user starts them, in network namespaces built by internal/netlab
// (the same topology as docker-compose.yml's NAT lab), and external programs (curl, dig, ping) check what a
// user would. The tests need root; without it they skip with one line.
package e2e
