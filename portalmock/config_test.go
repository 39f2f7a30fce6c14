package portalmock

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
)

func TestDefaultConfig(t *testing.T) {
	m, err := buildModel(DefaultFile())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]string{
		client1:  {"100.64.0.1", "fd00:2021:1111::1"},
		client2:  {"100.64.0.2", "fd00:2021:1111::2"},
		gateway1: {"100.64.0.3", "fd00:2021:1111::3"},
		gateway2: {"100.64.0.4", "fd00:2021:1111::4"},
	}
	for id, ips := range want {
		d := m.clients[id]
		if d == nil {
			d = m.gateways[id]
		}
		if d == nil || d.ipv4 != netip.MustParseAddr(ips[0]) || d.ipv6 != netip.MustParseAddr(ips[1]) {
			t.Errorf("%s: %+v, want %v", id, d, ips)
		}
	}
	for _, tok := range []string{DefaultClientToken1, DefaultClientToken2, DefaultGatewayToken1, DefaultGatewayToken2, DefaultRelayToken} {
		if _, ok := m.tokens[tokenKey(tok)]; !ok {
			t.Errorf("default token %q missing", tok)
		}
	}
	if m.adminToken != DefaultAdminToken {
		t.Errorf("admin token %q", m.adminToken)
	}
}

// examples/portal.yaml must stay a copy of the embedded default (apart from its two header lines).
func TestExampleMirrorsDefault(t *testing.T) {
	ex, err := os.ReadFile("../examples/portal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFile("../examples/portal.yaml"); err != nil {
		t.Fatal(err)
	}
	body := func(b []byte) []byte { return b[bytes.Index(b, []byte("\n#\n")):] }
	if !bytes.Equal(body(ex), body(defaultConfigYAML)) {
		t.Error("examples/portal.yaml differs from portalmock/default.yaml; copy it over")
	}
}

func TestConfigErrors(t *testing.T) {
	base := `
relays: [{token: r}]
accounts:
  - id: a
    sites: [{id: s, name: S}]
    clients: [{id: c, token: ct}]
    gateways: [{id: g, site: s, token: gt}]
    resources: [{id: r1, type: cidr, address: 192.0.2.0/24, sites: [s]}]
    policies: [{id: p, client: c, resource: r1}]
`
	if _, err := ParseFile([]byte(base)); err != nil {
		t.Fatalf("base config: %v", err)
	}
	tests := map[string][2]string{
		"unknown key":        {"clients: [{id: c, token: ct}]", "clients: [{id: c, token: ct, colour: red}]"},
		"duplicate token":    {"token: gt}", "token: ct}"},
		"unknown site":       {"site: s, token", "site: x, token"},
		"bad cidr":           {"address: 192.0.2.0/24", "address: 192.0.2.0/99"},
		"unknown type":       {"type: cidr", "type: printer"},
		"policy resource":    {"resource: r1}", "resource: r9}"},
		"policy client":      {"client: c, resource", "client: z, resource"},
		"bad tunnel address": {"{id: c, token: ct}", "{id: c, token: ct, ipv4: 'fd00::1'}"},
		"bad upstream":       {"- id: a\n", "- id: a\n    upstream_dns: [nope]\n"},
		"bad filter":         {"sites: [s]}", "sites: [s], filters: [{protocol: gre}]}"},
		"no token":           {"{id: c, token: ct}", "{id: c}"},
		"bad expiry":         {"{id: c, token: ct}", "{id: c, token: ct, expires_at: tomorrow}"},
	}
	for name, edit := range tests {
		t.Run(name, func(t *testing.T) {
			if !strings.Contains(base, edit[0]) {
				t.Fatalf("edit %q does not apply", edit[0])
			}
			_, err := ParseFile([]byte(strings.Replace(base, edit[0], edit[1], 1)))
			if !errors.Is(err, ErrConfig) {
				t.Errorf("err = %v, want ErrConfig", err)
			}
		})
	}
	if _, err := ParseFile([]byte("accounts: []")); !errors.Is(err, ErrConfig) {
		t.Errorf("no accounts: %v", err)
	}
}

func TestTunnelAllocationSkipsConfigured(t *testing.T) {
	f, err := ParseFile([]byte(`
accounts:
  - id: a
    sites: [{id: s, name: S}]
    clients:
      - {id: c1, token: t1}
      - {id: c2, token: t2, ipv4: 100.64.0.1, ipv6: "fd00:2021:1111::1"}
`))
	if err != nil {
		t.Fatal(err)
	}
	m, err := buildModel(f)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.clients["c1"].ipv4; got != netip.MustParseAddr("100.64.0.2") {
		t.Errorf("c1 ipv4 = %v, want 100.64.0.2 (100.64.0.1 is configured for c2)", got)
	}
	if got := m.clients["c1"].ipv6; got != netip.MustParseAddr("fd00:2021:1111::2") {
		t.Errorf("c1 ipv6 = %v", got)
	}
}

// Upstream DNS servers in the tunnel's own ranges, or unspecified, are refused with an error naming the
// account and the address; loopback and addresses next to the ranges are fine.
func TestUpstreamDNSReservedRanges(t *testing.T) {
	const tmpl = `
accounts:
  - id: acct-1
    upstream_dns: ["%s"]
    sites: [{id: s, name: S}]
`
	for _, tc := range []struct {
		upstream string
		bad      string // "" = accepted; else a word the error must contain
	}{
		{"100.64.0.1", "tunnel"},
		{"100.95.255.255", "tunnel"},
		{"[fd00:2021:1111::5]:53", "tunnel"},
		{"100.96.0.1", "DNS proxy"},
		{"100.127.255.254:5353", "DNS proxy"},
		{"fd00:2021:1111:8000::1", "DNS proxy"},
		{"100.100.111.1", "DNS sentinel"},
		{"fd00:2021:1111:8000:100:100:111:1", "DNS sentinel"},
		{"::ffff:100.100.111.2", "DNS sentinel"},
		{"0.0.0.0", "unspecified"},
		{"[::]:53", "unspecified"},
		{"127.0.0.1", ""},
		{"[::1]:5353", ""},
		{"100.63.255.255", ""},
		{"100.128.0.0", ""},
		{"fd00:2021:1112::1", ""},
		{"192.0.2.53", ""},
	} {
		_, err := ParseFile(fmt.Appendf(nil, tmpl, tc.upstream))
		if tc.bad == "" {
			if err != nil {
				t.Errorf("%s refused: %v", tc.upstream, err)
			}
			continue
		}
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "acct-1") || !strings.Contains(err.Error(), tc.bad) {
			t.Errorf("%s: err = %v, want ErrConfig naming acct-1 and %q", tc.upstream, err, tc.bad)
			continue
		}
		addr := strings.Trim(strings.TrimSuffix(strings.TrimSuffix(tc.upstream, ":53"), ":5353"), "[]")
		if a, perr := netip.ParseAddr(addr); perr == nil && !strings.Contains(err.Error(), a.String()) {
			t.Errorf("%s: error %q does not name the address", tc.upstream, err)
		}
	}
}

func TestLegacyGatewayProtocolConfig(t *testing.T) {
	f, err := ParseFile([]byte(`
accounts:
  - id: a
    sites: [{id: s, name: S}]
    clients:
      - {id: c1, token: t1, legacy_gateway_protocol: true}
      - {id: c2, token: t2}
`))
	if err != nil {
		t.Fatal(err)
	}
	m, err := buildModel(f)
	if err != nil {
		t.Fatal(err)
	}
	if !m.clients["c1"].legacyGateway || m.clients["c2"].legacyGateway {
		t.Errorf("legacy flags: c1 %v c2 %v", m.clients["c1"].legacyGateway, m.clients["c2"].legacyGateway)
	}
}
