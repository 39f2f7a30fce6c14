package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/snowgate/snowgate/internal/netlab"
)

// Addresses of the plain WireGuard tunnel (a CGNAT range apart from snowgate's 100.64.0.0/11).
const (
	wgClientIP  = "100.127.0.1"
	wgGatewayIP = "100.127.0.2"
	// wgMTU is snowgate's tunnel MTU, so both tunnels carry the same packets.
	wgMTU = 1280
)

// wgPair is upstream wireguard-go between the client and gateway hosts of a lab: the client's
// tunnel routes the resources network to the gateway, which forwards and masquerades it like
// snowgate's gateway; the gateway's router forwards udp/51820 to it.
type wgPair struct {
	l                *lab
	bin              string
	client, gateway  *proc
	cdev, gdev       string
	cpriv, gpub      string
	gpubKey, cpubKey string
}

// wgKeys returns a new private key and its public key (wg genkey, wg pubkey).
func wgKeys() (priv, pub string, err error) {
	out, err := exec.Command("wg", "genkey").Output()
	if err != nil {
		return "", "", fmt.Errorf("wg genkey: %w", err)
	}
	priv = strings.TrimSpace(string(out))
	cmd := exec.Command("wg", "pubkey")
	cmd.Stdin = strings.NewReader(priv)
	out, err = cmd.Output()
	if err != nil {
		return "", "", fmt.Errorf("wg pubkey: %w", err)
	}
	return priv, strings.TrimSpace(string(out)), nil
}

// wgDev names a wireguard-go interface uniquely on the machine (its UAPI socket lives in the shared
// /var/run/wireguard): "wg" + a tag + the lab's six hex digits.
func wgDev(l *lab, tag string) string {
	return "wg" + tag + strings.TrimPrefix(l.Lab.ID(), netlab.Prefix)
}

// startWG starts wireguard-go in foreground on dev in ns and waits for its UAPI socket.
func (l *lab) startWG(ctx context.Context, bin string, ns *netlab.Namespace, dev string) *proc {
	p := l.start(ns, dev, []string{"WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error"}, bin, "-f", dev)
	sock := filepath.Join("/var/run/wireguard", dev+".sock")
	l.must(eventually(ctx, 10*time.Second, 20*time.Millisecond, func() error {
		_, err := os.Stat(sock)
		return err
	}), "wireguard-go did not start")
	return p
}

// writeKey writes a key file for `wg set ... private-key`.
func (l *lab) writeKey(name, key string) string {
	path := filepath.Join(l.dir, name+".key")
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		l.tb.Fatalf("%v", err)
	}
	return path
}

// sh runs a shell command line in ns, failing the run on error.
func (l *lab) sh(ctx context.Context, ns *netlab.Namespace, line string) string {
	out, err := nsRun(ctx, ns, 20*time.Second, "sh", "-c", line)
	l.must(err, line)
	return out
}

// newWGPair sets up the plain wireguard-go tunnel in l.
func newWGPair(ctx context.Context, l *lab, bin string) *wgPair {
	w := &wgPair{l: l, bin: bin, cdev: wgDev(l, "c"), gdev: wgDev(l, "g")}
	cpriv, cpub, err := wgKeys()
	l.must(err, "keys")
	gpriv, gpub, err := wgKeys()
	l.must(err, "keys")
	w.cpriv, w.cpubKey, w.gpubKey = cpriv, cpub, gpub
	l.forward("udp", wgPort)
	w.gateway = l.startWG(ctx, bin, l.Gateway.Namespace, w.gdev)
	w.client = l.startWG(ctx, bin, l.Client.Namespace, w.cdev)
	resIf := l.Gateway.Iface(l.Resources).Name
	l.sh(ctx, l.Gateway.Namespace, fmt.Sprintf(`set -e
ip link set %[1]s mtu %[2]d up
ip addr add %[3]s/32 dev %[1]s
ip route add %[4]s/32 dev %[1]s
wg set %[1]s private-key %[5]s listen-port %[6]d peer %[7]s allowed-ips %[4]s/32
sysctl -qw net.ipv4.ip_forward=1
printf 'table inet wgbench {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n  ip saddr %[4]s oifname "%[8]s" masquerade\n }\n}\n' | nft -f -`,
		w.gdev, wgMTU, wgGatewayIP, wgClientIP, l.writeKey("wg-gateway", gpriv), wgPort, cpub, resIf))
	l.sh(ctx, l.Client.Namespace, fmt.Sprintf(`set -e
ip link set %[1]s mtu %[2]d up
ip addr add %[3]s/32 dev %[1]s
ip route add 203.0.113.0/24 dev %[1]s
wg set %[1]s private-key %[4]s`, w.cdev, wgMTU, wgClientIP, l.writeKey("wg-client", cpriv)))
	w.addPeer(ctx)
	l.must(eventually(ctx, 15*time.Second, 100*time.Millisecond, func() error {
		out, err := nsRun(ctx, l.Client.Namespace, 5*time.Second, "ping", "-n", "-c", "1", "-W", "2", resourceAddr)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}), "resource unreachable through wireguard-go")
	return w
}

// addPeer (re-)adds the gateway as the client's peer; a re-added peer has no session, so the next
// packet starts a handshake.
func (w *wgPair) addPeer(ctx context.Context) {
	w.l.sh(ctx, w.l.Client.Namespace, fmt.Sprintf("wg set %s peer %s endpoint %s:%d allowed-ips 203.0.113.0/24,%s/32",
		w.cdev, w.gpubKey, rgPublic, wgPort, wgGatewayIP))
}

// resetPeer removes and re-adds the client's peer: the next packet needs a fresh handshake.
func (w *wgPair) resetPeer(ctx context.Context) {
	w.l.sh(ctx, w.l.Client.Namespace, fmt.Sprintf("wg set %s peer %s remove", w.cdev, w.gpubKey))
	w.addPeer(ctx)
}

func (w *wgPair) stop() {
	w.client.stop(5 * time.Second)
	w.gateway.stop(5 * time.Second)
}
