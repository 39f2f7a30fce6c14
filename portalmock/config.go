package portalmock

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/snowgate/snowgate/internal/portalapi"
)

// defaultConfigYAML is the configuration used when no file is given: the dev stack's accounts and tokens.
// examples/portal.yaml is a copy of it.
//
//go:embed default.yaml
var defaultConfigYAML []byte

// Default tokens of the embedded configuration (development only; see default.yaml).
const (
	DefaultAdminToken    = "dev-admin-token"
	DefaultClientToken1  = "dev-client-token-1"
	DefaultClientToken2  = "dev-client-token-2"
	DefaultGatewayToken1 = "dev-gateway-token-1"
	DefaultGatewayToken2 = "dev-gateway-token-2"
	DefaultRelayToken    = "dev-relay-token"
)

// File is the declarative portal configuration (YAML). See examples/portal.yaml.
type File struct {
	// AdminToken protects the admin HTTP API ("Authorization: Bearer <token>"); empty disables the API.
	AdminToken string `yaml:"admin_token"`
	// Relays are the tokens relays authenticate with.
	Relays   []RelayConfig   `yaml:"relays"`
	Accounts []AccountConfig `yaml:"accounts"`
}

// RelayConfig is a relay token.
type RelayConfig struct {
	Name  string `yaml:"name"`
	Token string `yaml:"token"`
}

// AccountConfig is one account: its sites, devices, resources and policies.
type AccountConfig struct {
	ID   string `yaml:"id"`
	Slug string `yaml:"slug"`
	// UpstreamDNS are the clients' upstream resolvers, "ip" or "ip:port" (port 53 by default).
	UpstreamDNS  []string         `yaml:"upstream_dns"`
	SearchDomain string           `yaml:"search_domain"`
	Sites        []SiteConfig     `yaml:"sites"`
	Clients      []ClientConfig   `yaml:"clients"`
	Gateways     []GatewayConfig  `yaml:"gateways"`
	Resources    []ResourceConfig `yaml:"resources"`
	Policies     []PolicyConfig   `yaml:"policies"`
}

// SiteConfig is a site (gateway group).
type SiteConfig struct {
	ID   string `yaml:"id"`
	Name string `yaml:"name"`
}

// ClientConfig is a client token and the device it stands for.
type ClientConfig struct {
	ID    string `yaml:"id"`
	Name  string `yaml:"name"`
	Token string `yaml:"token"`
	// IPv4 / IPv6 are the tunnel addresses; empty ones are allocated from 100.64.0.0/11 and
	// fd00:2021:1111::/107.
	IPv4 string `yaml:"ipv4"`
	IPv6 string `yaml:"ipv6"`
	// ExpiresAt is the token's expiry (RFC 3339), which is also the expiry of the client's relay credentials
	// and flows; empty means 2038-01-01.
	ExpiresAt string `yaml:"expires_at"`
	// PSKBase is the base64 per-device secret mixed into PSKs; empty means sha256("snowgate-psk-base|<id>").
	PSKBase string `yaml:"psk_base"`
	// LegacyGatewayProtocol makes the portal speak the old, non-idempotent exchange to gateways for this
	// client's flows: request_connection → connection_ready for a client/gateway pair without a
	// connection, allow_access once it has one. The client itself still speaks create_flow / flow_created.
	LegacyGatewayProtocol bool `yaml:"legacy_gateway_protocol"`
}

// GatewayConfig is a gateway token and the gateway it stands for.
type GatewayConfig struct {
	ID      string `yaml:"id"`
	Name    string `yaml:"name"`
	Site    string `yaml:"site"`
	Token   string `yaml:"token"`
	IPv4    string `yaml:"ipv4"`
	IPv6    string `yaml:"ipv6"`
	PSKBase string `yaml:"psk_base"`
}

// FilterConfig is a resource filter; port bounds default to 0 and 65535.
type FilterConfig struct {
	Protocol       string  `yaml:"protocol" json:"protocol"`
	PortRangeStart *uint16 `yaml:"port_range_start" json:"port_range_start,omitempty"`
	PortRangeEnd   *uint16 `yaml:"port_range_end" json:"port_range_end,omitempty"`
}

// ResourceConfig is a resource in the configuration file and in the admin API (JSON).
type ResourceConfig struct {
	ID string `yaml:"id" json:"id"`
	// Account is the owning account's id; empty means the first account.
	Account            string         `yaml:"account" json:"account,omitempty"`
	Type               string         `yaml:"type" json:"type"`
	Name               string         `yaml:"name" json:"name"`
	Address            string         `yaml:"address" json:"address,omitempty"`
	AddressDescription string         `yaml:"address_description" json:"address_description,omitempty"`
	IPStack            string         `yaml:"ip_stack" json:"ip_stack,omitempty"`
	Sites              []string       `yaml:"sites" json:"sites"`
	Filters            []FilterConfig `yaml:"filters" json:"filters,omitempty"`
}

// PolicyConfig lets one client (or every client of the account: "*") reach one resource.
type PolicyConfig struct {
	ID       string `yaml:"id" json:"id"`
	Account  string `yaml:"account" json:"account,omitempty"`
	Client   string `yaml:"client" json:"client"`
	Resource string `yaml:"resource" json:"resource"`
}

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("portalmock: invalid config")

// DefaultFile returns the embedded default configuration.
func DefaultFile() *File {
	f, err := ParseFile(defaultConfigYAML)
	if err != nil {
		panic("portalmock: embedded default.yaml is invalid: " + err.Error()) // caught by tests
	}
	return f
}

// LoadFile reads and parses a configuration file.
func LoadFile(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("portalmock: read config: %w", err)
	}
	f, err := ParseFile(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// ParseFile parses YAML configuration; unknown keys are an error (typos must not pass silently).
func ParseFile(b []byte) (*File, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if _, err := buildModel(&f); err != nil {
		return nil, err
	}
	return &f, nil
}

// Tunnel address pools (reference/firezone.md §4).
var (
	tunnelPool4 = netip.MustParsePrefix("100.64.0.0/11")
	tunnelPool6 = netip.MustParsePrefix("fd00:2021:1111::/107")
)

type device struct {
	account   string
	id, name  string
	site      string // gateways
	ipv4      netip.Addr
	ipv6      netip.Addr
	expiresAt time.Time
	pskBase   []byte
	// legacyGateway: flows of this client use the old gateway protocol (clients only).
	legacyGateway bool
}

type account struct {
	id, slug     string
	upstream     []netip.AddrPort
	searchDomain string
	sites        map[string]SiteConfig
}

type tokenKind int

const (
	kindClient tokenKind = iota + 1
	kindGateway
	kindRelay
)

// String returns the kind's channel topic and URL prefix ("client", "gateway", "relay").
func (k tokenKind) String() string {
	switch k {
	case kindClient:
		return "client"
	case kindGateway:
		return "gateway"
	case kindRelay:
		return "relay"
	}
	return "unknown"
}

type identity struct {
	kind tokenKind
	id   string // client/gateway id, relay name
}

// model is the validated configuration plus the mutable resources and policies.
type model struct {
	adminToken   string
	firstAccount string
	accounts     map[string]*account
	clients      map[string]*device
	gateways     map[string]*device
	// tokens maps sha256(token) to who it is.
	tokens    map[[32]byte]identity
	resources map[string]ResourceConfig
	policies  map[string]PolicyConfig
}

func tokenKey(tok string) [32]byte { return sha256.Sum256([]byte(tok)) }

func cfgErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, args...))
}

func buildModel(f *File) (*model, error) {
	m := &model{
		adminToken: f.AdminToken,
		accounts:   map[string]*account{},
		clients:    map[string]*device{},
		gateways:   map[string]*device{},
		tokens:     map[[32]byte]identity{},
		resources:  map[string]ResourceConfig{},
		policies:   map[string]PolicyConfig{},
	}
	addToken := func(tok string, id identity) error {
		if tok == "" {
			return cfgErr("%s %q has no token", id.kind, id.id)
		}
		k := tokenKey(tok)
		if _, dup := m.tokens[k]; dup {
			return cfgErr("%s %q: token used twice", id.kind, id.id)
		}
		m.tokens[k] = id
		return nil
	}
	for i, r := range f.Relays {
		name := r.Name
		if name == "" {
			name = fmt.Sprintf("relay-%d", i+1)
		}
		if err := addToken(r.Token, identity{kindRelay, name}); err != nil {
			return nil, err
		}
	}
	if len(f.Accounts) == 0 {
		return nil, cfgErr("no accounts")
	}
	alloc := newAllocator()
	var devs []*device
	var devCfg [][2]string
	for _, a := range f.Accounts {
		if a.ID == "" || m.accounts[a.ID] != nil {
			return nil, cfgErr("account id %q empty or duplicate", a.ID)
		}
		if m.firstAccount == "" {
			m.firstAccount = a.ID
		}
		acc := &account{id: a.ID, slug: a.Slug, searchDomain: a.SearchDomain, sites: map[string]SiteConfig{}}
		for _, u := range a.UpstreamDNS {
			ap, err := parseUpstream(u)
			if err != nil {
				return nil, cfgErr("account %s: upstream_dns %q: %v", a.ID, u, err)
			}
			if err := checkUpstream(ap.Addr()); err != nil {
				return nil, cfgErr("account %s: upstream_dns %s: %v", a.ID, ap.Addr(), err)
			}
			acc.upstream = append(acc.upstream, ap)
		}
		for _, s := range a.Sites {
			if s.ID == "" || siteExists(m, s.ID) || acc.sites[s.ID].ID != "" {
				return nil, cfgErr("account %s: site id %q empty or duplicate", a.ID, s.ID)
			}
			acc.sites[s.ID] = s
		}
		m.accounts[a.ID] = acc
		for _, c := range a.Clients {
			if c.ID == "" || m.clients[c.ID] != nil || m.gateways[c.ID] != nil {
				return nil, cfgErr("client id %q empty or duplicate", c.ID)
			}
			d := &device{account: a.ID, id: c.ID, name: c.Name, expiresAt: portalapi.GatewayRelayExpiry, legacyGateway: c.LegacyGatewayProtocol}
			if c.ExpiresAt != "" {
				t, err := time.Parse(time.RFC3339, c.ExpiresAt)
				if err != nil {
					return nil, cfgErr("client %s: expires_at: %v", c.ID, err)
				}
				d.expiresAt = t
			}
			if err := addToken(c.Token, identity{kindClient, c.ID}); err != nil {
				return nil, err
			}
			m.clients[c.ID] = d
			devs, devCfg = append(devs, d), append(devCfg, [2]string{c.IPv4, c.IPv6})
			if d.pskBase, _ = pskBase(c.ID, c.PSKBase); d.pskBase == nil {
				return nil, cfgErr("client %s: psk_base is not base64", c.ID)
			}
		}
		for _, g := range a.Gateways {
			if g.ID == "" || m.clients[g.ID] != nil || m.gateways[g.ID] != nil {
				return nil, cfgErr("gateway id %q empty or duplicate", g.ID)
			}
			if _, ok := acc.sites[g.Site]; !ok {
				return nil, cfgErr("gateway %s: unknown site %q", g.ID, g.Site)
			}
			d := &device{account: a.ID, id: g.ID, name: g.Name, site: g.Site, expiresAt: portalapi.GatewayRelayExpiry}
			if err := addToken(g.Token, identity{kindGateway, g.ID}); err != nil {
				return nil, err
			}
			m.gateways[g.ID] = d
			devs, devCfg = append(devs, d), append(devCfg, [2]string{g.IPv4, g.IPv6})
			if d.pskBase, _ = pskBase(g.ID, g.PSKBase); d.pskBase == nil {
				return nil, cfgErr("gateway %s: psk_base is not base64", g.ID)
			}
		}
	}
	// Configured tunnel addresses first, so that allocation skips them.
	for i, d := range devs {
		for j, s := range devCfg[i] {
			if s == "" {
				continue
			}
			a, err := netip.ParseAddr(s)
			if err != nil || a.Is4() != (j == 0) {
				return nil, cfgErr("%s: bad tunnel address %q", d.id, s)
			}
			if !alloc.take(a) {
				return nil, cfgErr("%s: tunnel address %s used twice", d.id, a)
			}
			if j == 0 {
				d.ipv4 = a
			} else {
				d.ipv6 = a
			}
		}
	}
	for _, d := range devs {
		var err error
		if !d.ipv4.IsValid() {
			if d.ipv4, err = alloc.next(tunnelPool4); err != nil {
				return nil, err
			}
		}
		if !d.ipv6.IsValid() {
			if d.ipv6, err = alloc.next(tunnelPool6); err != nil {
				return nil, err
			}
		}
	}
	for _, a := range f.Accounts {
		for _, r := range a.Resources {
			if r.Account == "" {
				r.Account = a.ID
			}
			if _, dup := m.resources[r.ID]; dup {
				return nil, cfgErr("resource id %q duplicate", r.ID)
			}
			if err := m.checkResource(r); err != nil {
				return nil, err
			}
			m.resources[r.ID] = r
		}
		for _, p := range a.Policies {
			if p.Account == "" {
				p.Account = a.ID
			}
			if _, dup := m.policies[p.ID]; dup {
				return nil, cfgErr("policy id %q duplicate", p.ID)
			}
			if err := m.checkPolicy(p); err != nil {
				return nil, err
			}
			m.policies[p.ID] = p
		}
	}
	return m, nil
}

func siteExists(m *model, id string) bool {
	for _, a := range m.accounts {
		if _, ok := a.sites[id]; ok {
			return true
		}
	}
	return false
}

func pskBase(id, configured string) ([]byte, error) {
	if configured == "" {
		h := sha256.Sum256([]byte("snowgate-psk-base|" + id))
		return h[:], nil
	}
	b, err := base64.StdEncoding.DecodeString(configured)
	if err != nil {
		return nil, fmt.Errorf("psk_base: %w", err)
	}
	return b, nil
}

func parseUpstream(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("neither ip nor ip:port")
	}
	return netip.AddrPortFrom(a, 53), nil
}

// reservedRanges are the address ranges the tunnel uses itself (reference/firezone.md §4): an upstream DNS
// server there would be the client's own tunnel, proxy or sentinel address (Firezone's portal refuses them,
// seed #7060).
var reservedRanges = []struct {
	name   string
	prefix netip.Prefix
}{
	{"tunnel", tunnelPool4},
	{"tunnel", tunnelPool6},
	{"DNS proxy", netip.MustParsePrefix("100.96.0.0/11")},
	{"DNS proxy", netip.MustParsePrefix("fd00:2021:1111:8000::/107")},
	{"DNS sentinel", netip.MustParsePrefix("100.100.111.0/24")},
	{"DNS sentinel", netip.MustParsePrefix("fd00:2021:1111:8000:100:100:111:0/120")},
}

// checkUpstream refuses an upstream DNS server in a reserved range or unspecified (0.0.0.0, ::); loopback
// is allowed (a dev stack's resolver).
func checkUpstream(a netip.Addr) error {
	a = a.Unmap()
	if a.IsUnspecified() {
		return fmt.Errorf("the unspecified address is not a DNS server")
	}
	// Sentinels lie inside the proxy ranges: check the narrower range first for the clearer message.
	for _, r := range slices.Backward(reservedRanges) {
		if r.prefix.Contains(a) {
			return fmt.Errorf("in the reserved %s range %s", r.name, r.prefix)
		}
	}
	return nil
}

// checkResource validates a resource against the model (account and sites exist, address valid).
func (m *model) checkResource(r ResourceConfig) error {
	if r.ID == "" {
		return cfgErr("resource with empty id")
	}
	acc := m.accounts[r.Account]
	if acc == nil {
		return cfgErr("resource %s: unknown account %q", r.ID, r.Account)
	}
	for _, s := range r.Sites {
		if _, ok := acc.sites[s]; !ok {
			return cfgErr("resource %s: unknown site %q", r.ID, s)
		}
	}
	if err := acc.resource(r).Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return nil
}

func (m *model) checkPolicy(p PolicyConfig) error {
	if p.ID == "" {
		return cfgErr("policy with empty id")
	}
	if m.accounts[p.Account] == nil {
		return cfgErr("policy %s: unknown account %q", p.ID, p.Account)
	}
	if r, ok := m.resources[p.Resource]; !ok || r.Account != p.Account {
		return cfgErr("policy %s: unknown resource %q", p.ID, p.Resource)
	}
	if c, ok := m.clients[p.Client]; p.Client != "*" && (!ok || c.account != p.Account) {
		return cfgErr("policy %s: unknown client %q", p.ID, p.Client)
	}
	return nil
}

// resource renders a configured resource as the client sees it (with sites, in the order configured).
func (a *account) resource(r ResourceConfig) portalapi.Resource {
	out := portalapi.Resource{
		Type: portalapi.ResourceType(r.Type), ID: r.ID, Name: r.Name, Address: r.Address,
		AddressDescription: r.AddressDescription, IPStack: portalapi.IPStack(r.IPStack),
	}
	for _, s := range r.Sites {
		out.Sites = append(out.Sites, portalapi.Site{ID: s, Name: a.sites[s].Name})
	}
	for _, f := range r.Filters {
		pf := portalapi.Filter{Protocol: portalapi.Protocol(f.Protocol)}
		if pf.Protocol == portalapi.ProtocolTCP || pf.Protocol == portalapi.ProtocolUDP {
			pf.PortRangeEnd = 65535
			if f.PortRangeStart != nil {
				pf.PortRangeStart = *f.PortRangeStart
			}
			if f.PortRangeEnd != nil {
				pf.PortRangeEnd = *f.PortRangeEnd
			}
		}
		out.Filters = append(out.Filters, pf)
	}
	return out
}

// allocator hands out tunnel addresses sequentially from a pool, skipping taken ones.
type allocator struct {
	taken map[netip.Addr]bool
	last  map[netip.Prefix]netip.Addr
}

func newAllocator() *allocator {
	return &allocator{taken: map[netip.Addr]bool{}, last: map[netip.Prefix]netip.Addr{}}
}

func (a *allocator) take(ip netip.Addr) bool {
	if a.taken[ip] {
		return false
	}
	a.taken[ip] = true
	return true
}

func (a *allocator) next(pool netip.Prefix) (netip.Addr, error) {
	ip, ok := a.last[pool]
	if !ok {
		ip = pool.Addr() // network address itself is skipped by the first Next
	}
	for {
		ip = ip.Next()
		if !pool.Contains(ip) {
			return netip.Addr{}, cfgErr("tunnel pool %s exhausted", pool)
		}
		if a.take(ip) {
			a.last[pool] = ip
			return ip, nil
		}
	}
}
