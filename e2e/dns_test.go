package e2e

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/netlab"
)

// TestDNSResource: the client's stub answers resource names with proxy IPs, and the names work.
//   - dig → addresses in 100.96.0.0/11; curl http://name/ reaches the resource by that name;
//   - two names under the one wildcard resource get their own proxy IPs and both work;
//   - an HTTPS (type 65) query for a resource name → NOERROR with no answers;
//   - dig +tcp (the stub's DNS over TCP) gives the same proxy IPs;
//   - an upstream TXT answer over 1212 bytes: truncated (TC, OPT kept) over UDP, complete over TCP.
func TestDNSResource(t *testing.T) {
	t.Parallel()
	timed(t)
	l := newLab(t, netlab.StandardOptions{})
	l.startGateway(1)
	c := l.startClient()
	l.waitClientJoined(c)

	names := []string{webName, "files.corp.test"}
	proxies := map[string][]netip.Addr{}
	for _, name := range names {
		r := l.mustDig(name, "A")
		ips := addrsOf(r.rrs)
		if len(ips) == 0 {
			t.Fatalf("dig %s: no A record:\n%s", name, r.raw)
		}
		for _, a := range ips {
			if !proxyRange.Contains(a) {
				t.Fatalf("dig %s: %s is not a proxy IP:\n%s", name, a, r.raw)
			}
		}
		proxies[name] = ips
		if out := l.must(20*time.Second, "curl", "-fsS", "--max-time", "5", "http://"+name+"/"); !strings.Contains(out, "resource page for "+name) {
			t.Fatalf("curl http://%s/: %q", name, out)
		}
	}
	for _, a := range proxies[names[0]] {
		if slices.Contains(proxies[names[1]], a) {
			t.Fatalf("%s and %s share proxy IP %s", names[0], names[1], a)
		}
	}
	st, err := l.clientStatus(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		found := false
		for _, n := range st.DNS.Names {
			if strings.TrimSuffix(n.Name, ".") == name {
				found = true
				if n.ResourceID != resCorpWeb {
					t.Errorf("status: name %s routes to resource %q, want the wildcard resource %s", n.Name, n.ResourceID, resCorpWeb)
				}
			}
		}
		if !found {
			t.Errorf("status: %s not among the names %+v", name, st.DNS.Names)
		}
	}

	// HTTPS records are not synthesised for resource names: NOERROR, no answer, so that the application
	// falls back to A/AAAA.
	r := l.mustDig(webName, "TYPE65")
	if r.answers != 0 {
		t.Errorf("dig %s HTTPS: %d answers, want none:\n%s", webName, r.answers, r.raw)
	}

	// DNS over TCP to the sentinel.
	r = l.mustDig("+tcp", webName, "A")
	if got := addrsOf(r.rrs); !slices.Equal(got, proxies[webName]) {
		t.Errorf("dig +tcp %s: %v, want %v as over UDP:\n%s", webName, got, proxies[webName], r.raw)
	}

	// A big upstream answer (the portal host's DNS server, the account's upstream, answers TXT queries for
	// big.* with 12 strings of 200 bytes): over UDP the stub truncates it to 1212 bytes (TC; the OPT record
	// of the EDNS query kept), over TCP it comes whole.
	r = l.mustDig("+ignore", "big.example.net", "TXT")
	if !slices.Contains(r.flags, "tc") || !r.opt {
		t.Errorf("dig +ignore big.example.net TXT: flags %v, OPT %v; want tc and an OPT record:\n%s", r.flags, r.opt, r.raw)
	}
	if r.answers >= 12 {
		t.Errorf("dig +ignore big.example.net TXT: %d answers over UDP, want fewer than 12:\n%s", r.answers, r.raw)
	}
	r = l.mustDig("+tcp", "big.example.net", "TXT")
	if slices.Contains(r.flags, "tc") || r.answers != 12 {
		t.Errorf("dig +tcp big.example.net TXT: flags %v, %d answers; want 12, not truncated:\n%s", r.flags, r.answers, r.raw)
	}
	for i, rr := range r.rrs {
		if !strings.Contains(rr, strings.Repeat(fmt.Sprint(i%10), 200)) {
			t.Errorf("dig +tcp big.example.net TXT: record %d is %q", i, rr)
			break
		}
	}
}

// TestDNSUpstreamInsideCIDRResource: the account's upstream resolver is the resource host's DNS server,
// 203.0.113.100, inside the CIDR resource 203.0.113.0/24: the client reaches it through the tunnel (the
// client's site has no other route to the resources network).
func TestDNSUpstreamInsideCIDRResource(t *testing.T) {
	t.Parallel()
	timed(t)
	cfg := strings.Replace(portalConfig, `upstream_dns: ["198.18.0.100"]`, `upstream_dns: ["203.0.113.100"]`, 1)
	if cfg == portalConfig {
		t.Fatal("portalConfig has no upstream_dns line to replace")
	}
	l := newLabConfig(t, netlab.StandardOptions{}, cfg)
	l.startGateway(1)
	c := l.startClient()
	l.waitClientJoined(c)

	st, err := l.clientStatus(c)
	if err != nil {
		t.Fatal(err)
	}
	want := netip.MustParseAddrPort("203.0.113.100:53")
	for _, s := range st.DNS.Sentinels {
		if s.Sentinel.Is4() && s.Upstream != want {
			t.Fatalf("sentinel %s forwards to %s, want %s", s.Sentinel, s.Upstream, want)
		}
	}
	// The client's site has no route to the resources network but the tunnel: the first query creates the
	// flow to the upstream's resource.
	if gw, err := l.resourceGateway(c, resNetwork); err == nil {
		t.Fatalf("flow to the resources network through %s before any traffic", gw)
	}
	r := l.mustDig("public.example.net", "A")
	if got := addrsOf(r.rrs); len(got) != 1 || got[0] != netip.MustParseAddr("198.18.0.100") {
		t.Fatalf("dig public.example.net: %v:\n%s", got, r.raw)
	}
	// DNS over TCP through the tunnel, with an answer bigger than a UDP reply may be.
	r = l.mustDig("+tcp", "big.example.net", "TXT")
	if r.answers != 12 {
		t.Fatalf("dig +tcp big.example.net TXT through the tunnel: %d answers:\n%s", r.answers, r.raw)
	}
	gw, err := l.resourceGateway(c, resNetwork)
	if err != nil || gw != gateway1ID {
		t.Fatalf("the upstream's resource has no flow through gateway-1: %q, %v", gw, err)
	}
	// Resource names still get proxy IPs, and work.
	if out := l.must(20*time.Second, "curl", "-fsS", "--max-time", "5", "http://"+webName+"/"); !strings.Contains(out, "resource page for "+webName) {
		t.Fatalf("curl by name: %q", out)
	}
}
