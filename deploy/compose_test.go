package deploy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/snowgate/snowgate/internal/netlab"
)

// composeFile is the part of docker-compose.yml the tests look at.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Networks map[string]composeNetwork `yaml:"networks"`
}

type composeNetwork struct {
	Internal bool `yaml:"internal"`
	IPAM     struct {
		Config []struct {
			Subnet  string `yaml:"subnet"`
			Gateway string `yaml:"gateway"`
		} `yaml:"config"`
	} `yaml:"ipam"`
}

type composeService struct {
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
		Target     string `yaml:"target"`
	} `yaml:"build"`
	Image           string         `yaml:"image"`
	Entrypoint      stringList     `yaml:"entrypoint"`
	Command         stringList     `yaml:"command"`
	Environment     map[string]any `yaml:"environment"`
	StopGracePeriod string         `yaml:"stop_grace_period"`
	Privileged      bool           `yaml:"privileged"`
	CapAdd          []string       `yaml:"cap_add"`
	Devices         []string       `yaml:"devices"`
	Sysctls         map[string]any `yaml:"sysctls"`
	DNS             stringList     `yaml:"dns"`
	NetworkMode     string         `yaml:"network_mode"`
	Networks        map[string]struct {
		IPv4 string `yaml:"ipv4_address"`
		IPv6 string `yaml:"ipv6_address"`
	} `yaml:"networks"`
}

// stringList is a compose field that is either one string or a list of strings.
type stringList []string

// UnmarshalYAML accepts a scalar (split on spaces, as compose does for entrypoint and command) or a sequence.
func (l *stringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*l = strings.Fields(n.Value)
		return nil
	}
	var v []string
	if err := n.Decode(&v); err != nil {
		return err
	}
	*l = v
	return nil
}

func (s composeService) env(k string) string {
	v, ok := s.Environment[k]
	if !ok || v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

func (s composeService) sysctl(k string) string {
	v, ok := s.Sysctls[k]
	if !ok || v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

// target is the Dockerfile target the service builds ("" for none).
func (s composeService) target() string {
	if s.Build == nil {
		return ""
	}
	return s.Build.Target
}

// addrs returns every fixed address of the service.
func (s composeService) addrs() []netip.Addr {
	var out []netip.Addr
	for _, n := range sortedKeys(s.Networks) {
		for _, a := range []string{s.Networks[n].IPv4, s.Networks[n].IPv6} {
			if p, err := netip.ParseAddr(a); err == nil {
				out = append(out, p)
			}
		}
	}
	return out
}

func parseCompose(t *testing.T, text string) composeFile {
	t.Helper()
	var c composeFile
	if err := yaml.Unmarshal([]byte(text), &c); err != nil {
		t.Fatalf("parse compose file: %v", err)
	}
	if len(c.Services) == 0 {
		t.Fatal("compose file has no services")
	}
	return c
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	return parseCompose(t, readFile(t, "docker-compose.yml"))
}

// composeCommand finds docker-compose (v1, the Debian package) or the docker compose plugin.
func composeCommand() ([]string, bool) {
	if p, err := exec.LookPath("docker-compose"); err == nil {
		return []string{p}, true
	}
	if p, err := exec.LookPath("docker"); err == nil {
		if exec.Command(p, "compose", "version").Run() == nil {
			return []string{p, "compose"}, true
		}
	}
	return nil, false
}

// TestComposeConfig validates docker-compose.yml with `docker-compose config -q`.
func TestComposeConfig(t *testing.T) {
	cmd, ok := composeCommand()
	if !ok {
		t.Skip("docker-compose not installed (Debian package docker-compose, or the docker compose plugin); " +
			"compose validation skipped")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	args := append(cmd[1:], "-f", "docker-compose.yml", "config", "-q")
	if out, err := runTool(t, abs, cmd[0], args...); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("%s %s: %v\n%s", cmd[0], strings.Join(args, " "), err, out)
	}
}

// servicePrograms returns what a compose service runs that may read its environment: the programs named by
// its `entrypoint:` (a wrapper such as lab-entrypoint passes its environment on to the program it execs), or
// else the image's ENTRYPOINT. Programs are looked up in the image the service builds.
func servicePrograms(t *testing.T, ix *sourceIndex, stages map[string]dockerStage, s composeService) []program {
	t.Helper()
	st, ok := stages[s.target()]
	if !ok {
		return nil
	}
	progs := imagePrograms(t, ix, st)
	argv := []string(s.Entrypoint)
	if len(argv) == 0 {
		argv = st.entrypoint()
	}
	var out []program
	for _, a := range argv {
		if p, ok := progs[a]; ok {
			out = append(out, p)
		}
	}
	return out
}

// TestComposeEnvironment checks every environment variable of every service: it must be read by a program
// the service runs, the snowgate binary or an entrypoint script of deploy/docker (lab-entrypoint.sh reads
// ROUTER_IP4/ROUTER_IP6, router.sh MASQUERADE_TYPE and NETWORK_LATENCY_MS).
func TestComposeEnvironment(t *testing.T) {
	c := loadCompose(t)
	stages := map[string]dockerStage{}
	for _, s := range parseDockerfile(t) {
		stages[s.name] = s
	}
	ix := newSourceIndex(t)
	for _, name := range sortedKeys(c.Services) {
		s := c.Services[name]
		if s.Build == nil {
			if len(s.Environment) > 0 {
				t.Errorf("service %s: third-party image with environment %v: nothing checks those names", name, sortedKeys(s.Environment))
			}
			continue
		}
		if s.Build.Dockerfile != "deploy/docker/Dockerfile" || s.Build.Context != "." {
			t.Errorf("service %s builds %s in %s; want deploy/docker/Dockerfile in .", name, s.Build.Dockerfile, s.Build.Context)
		}
		if _, ok := stages[s.Build.Target]; !ok {
			t.Errorf("service %s builds target %s, which the Dockerfile lacks", name, s.Build.Target)
			continue
		}
		progs := servicePrograms(t, ix, stages, s)
		for _, v := range sortedKeys(s.Environment) {
			var names []string
			read := false
			for _, p := range progs {
				names = append(names, p.name)
				read = read || p.reads(v)
			}
			if !read {
				t.Errorf("compose service %s: environment variable %s is read by none of the programs it runs %v", name, v, names)
			}
		}
	}
}

// TestScriptReads pins the rule TestComposeEnvironment applies to scripts.
func TestScriptReads(t *testing.T) {
	text := `ip route replace default via "$ROUTER_IP4"` + "\n" + `x=${NETWORK_LATENCY_MS:-0} $LAN6`
	for name, want := range map[string]bool{"ROUTER_IP4": true, "NETWORK_LATENCY_MS": true, "ROUTER_IP6": false, "LAN": false, "LAN6": true} {
		if got := scriptReads(text, name); got != want {
			t.Errorf("scriptReads(%s) = %v, want %v", name, got, want)
		}
	}
}

// TestComposeAddresses checks that the networks use only the lab ranges, that every fixed address sits in its
// network's subnet and is not Docker's gateway address there, and that the relays advertise their own
// addresses.
func TestComposeAddresses(t *testing.T) {
	c := loadCompose(t)
	subnets := map[string][]netip.Prefix{}
	gateways := map[netip.Addr]string{}
	for _, name := range sortedKeys(c.Networks) {
		for _, cfg := range c.Networks[name].IPAM.Config {
			p, err := netip.ParsePrefix(cfg.Subnet)
			if err != nil {
				t.Errorf("network %s: bad subnet %q: %v", name, cfg.Subnet, err)
				continue
			}
			if !inLabRanges(p) {
				t.Errorf("network %s: subnet %s is outside the lab ranges %v", name, p, labRanges)
			}
			subnets[name] = append(subnets[name], p)
			// Without an explicit gateway, Docker's bridge takes the subnet's first address.
			gw := p.Masked().Addr().Next()
			if cfg.Gateway != "" {
				if gw, err = netip.ParseAddr(cfg.Gateway); err != nil || !p.Contains(gw) {
					t.Errorf("network %s: gateway %q is not an address in %s", name, cfg.Gateway, p)
				}
			}
			gateways[gw] = name
		}
	}
	seen := map[netip.Addr]string{}
	for _, name := range sortedKeys(c.Services) {
		s := c.Services[name]
		for netName, att := range s.Networks {
			nets, ok := subnets[netName]
			if !ok {
				t.Errorf("service %s: network %s has no ipam subnets", name, netName)
				continue
			}
			for _, a := range []string{att.IPv4, att.IPv6} {
				if a == "" {
					continue
				}
				addr, err := netip.ParseAddr(a)
				if err != nil {
					t.Errorf("service %s: bad address %q: %v", name, a, err)
					continue
				}
				in := false
				for _, p := range nets {
					in = in || p.Contains(addr)
				}
				if !in {
					t.Errorf("service %s: %s is not in network %s %v", name, addr, netName, nets)
				}
				if n, gw := gateways[addr]; gw {
					t.Errorf("service %s: %s is Docker's bridge gateway on network %s (set ipam gateway: elsewhere)", name, addr, n)
				}
				if other, dup := seen[addr]; dup {
					t.Errorf("services %s and %s share %s", other, name, addr)
				}
				seen[addr] = name
			}
		}
		if s.target() == "relay" {
			inet := s.Networks["internet"]
			if s.env("PUBLIC_IP4_ADDR") != inet.IPv4 || s.env("PUBLIC_IP6_ADDR") != inet.IPv6 {
				t.Errorf("relay %s advertises %s/%s but sits at %s/%s on the internet", name,
					s.env("PUBLIC_IP4_ADDR"), s.env("PUBLIC_IP6_ADDR"), inet.IPv4, inet.IPv6)
			}
		}
	}
}

// netlabPlan is the compose lab's address plan, service → network → IPv4 and IPv6 address: exactly
// internal/netlab's StandardTopology (standard.go). TestComposeNetlabAddresses checks it against the compose
// file and, where network namespaces can be made, against a StandardTopology built for the purpose.
var netlabPlan = map[string]map[string][2]string{
	"portal":  {"internet": {"198.18.0.100", "2001:db8:ffff::100"}},
	"relay-1": {"internet": {"198.18.0.101", "2001:db8:ffff::101"}},
	"relay-2": {"internet": {"198.18.0.102", "2001:db8:ffff::102"}},
	"client-router": {
		"internet":   {"198.18.0.1", "2001:db8:ffff::1"},
		"client-lan": {"192.0.2.1", "2001:db8:1::1"},
	},
	"client": {"client-lan": {"192.0.2.2", "2001:db8:1::2"}},
	"gateway-router": {
		"internet":    {"198.18.0.2", "2001:db8:ffff::2"},
		"gateway-lan": {"198.51.100.1", "2001:db8:2::1"},
	},
	"gateway": {
		"gateway-lan": {"198.51.100.2", "2001:db8:2::2"},
		"resources":   {"203.0.113.1", "2001:db8:3::1"},
	},
	"resource": {"resources": {"203.0.113.100", "2001:db8:3::100"}},
}

// netlabNetworks are netlab's prefixes of the compose networks (compose's must lie inside them).
var netlabNetworks = map[string][2]string{
	"internet":    {"198.18.0.0/15", "2001:db8:ffff::/64"},
	"client-lan":  {"192.0.2.0/24", "2001:db8:1::/64"},
	"gateway-lan": {"198.51.100.0/24", "2001:db8:2::/64"},
	"resources":   {"203.0.113.0/24", "2001:db8:3::/64"},
}

func TestComposeNetlabAddresses(t *testing.T) {
	c := loadCompose(t)
	for _, name := range sortedKeys(c.Services) {
		s := c.Services[name]
		plan, ok := netlabPlan[name]
		if !ok && len(s.Networks) > 0 {
			t.Errorf("service %s has addresses but no place in the netlab plan: add it to netlabPlan (and netlab)", name)
			continue
		}
		if len(s.Networks) != len(plan) {
			t.Errorf("service %s is on networks %v; the plan says %v", name, sortedKeys(s.Networks), sortedKeys(plan))
		}
		for netName, want := range plan {
			got := s.Networks[netName]
			if got.IPv4 != want[0] || got.IPv6 != want[1] {
				t.Errorf("service %s on %s: %s %s; netlab has %s %s", name, netName, got.IPv4, got.IPv6, want[0], want[1])
			}
		}
	}
	for name := range netlabPlan {
		if _, ok := c.Services[name]; !ok {
			t.Errorf("netlab plan service %s is missing from docker-compose.yml", name)
		}
	}
	for name, n := range c.Networks {
		want, ok := netlabNetworks[name]
		if !ok {
			t.Errorf("network %s has no netlab counterpart in netlabNetworks", name)
			continue
		}
		for _, cfg := range n.IPAM.Config {
			p, err := netip.ParsePrefix(cfg.Subnet)
			if err != nil {
				continue // TestComposeAddresses reports it
			}
			in := false
			for _, w := range want {
				wp := netip.MustParsePrefix(w)
				in = in || (wp.Bits() <= p.Bits() && wp.Contains(p.Addr()))
			}
			if !in {
				t.Errorf("network %s: subnet %s is not inside netlab's %v", name, p, want)
			}
		}
		if internal := name != "internet"; n.Internal != internal {
			t.Errorf("network %s: internal=%v, want %v (sites reach the internet only through their router)", name, n.Internal, internal)
		}
	}

	t.Run("netlab", func(t *testing.T) {
		s := netlab.StandardTopology(t, netlab.StandardOptions{})
		lanAddrs := func(r *netlab.Router) [2]string {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			out, err := r.Exec(ctx, "ip", "-o", "addr", "show", "dev", netlab.Prefix+"lan", "scope", "global")
			if err != nil {
				t.Fatal(err)
			}
			var a [2]string
			for _, line := range strings.Split(string(out), "\n") {
				f := strings.Fields(line)
				for i := 0; i+1 < len(f); i++ {
					switch f[i] {
					case "inet":
						a[0], _, _ = strings.Cut(f[i+1], "/")
					case "inet6":
						a[1], _, _ = strings.Cut(f[i+1], "/")
					}
				}
			}
			return a
		}
		pair := func(v4, v6 netip.Addr) [2]string { return [2]string{v4.String(), v6.String()} }
		gwRes := s.Gateway.Iface(s.Resources)
		gwLAN := s.Gateway.Iface(s.GatewayLAN)
		got := map[string]map[string][2]string{
			"portal":  {"internet": pair(s.Portal.Addr4(), s.Portal.Addr6())},
			"relay-1": {"internet": pair(s.Relay1.Addr4(), s.Relay1.Addr6())},
			"relay-2": {"internet": pair(s.Relay2.Addr4(), s.Relay2.Addr6())},
			"client-router": {
				"internet":   pair(s.RC.PublicAddr4(), s.RC.PublicAddr6()),
				"client-lan": lanAddrs(s.RC),
			},
			"client": {"client-lan": pair(s.Client.Addr4(), s.Client.Addr6())},
			"gateway-router": {
				"internet":    pair(s.RG.PublicAddr4(), s.RG.PublicAddr6()),
				"gateway-lan": lanAddrs(s.RG),
			},
			"gateway": {
				"gateway-lan": pair(gwLAN.Addr4, gwLAN.Addr6),
				"resources":   pair(gwRes.Addr4, gwRes.Addr6),
			},
			"resource": {"resources": pair(s.Resource.Addr4(), s.Resource.Addr6())},
		}
		for _, name := range sortedKeys(netlabPlan) {
			for netName, want := range netlabPlan[name] {
				if g := got[name][netName]; g != want {
					t.Errorf("netlab's %s on %s is %v; the compose plan says %v", name, netName, g, want)
				}
			}
		}
		nets := map[string]*netlab.Network{"internet": s.Internet, "client-lan": s.ClientLAN, "gateway-lan": s.GatewayLAN, "resources": s.Resources}
		for name, n := range nets {
			var ps []string
			for _, p := range n.Prefixes() {
				ps = append(ps, p.String())
			}
			if want := netlabNetworks[name]; !slices.Equal(ps, want[:]) {
				t.Errorf("netlab's %s is %v; netlabNetworks says %v", name, ps, want)
			}
		}
	})
}

// devTokens reads the tokens of the portal's embedded development configuration.
func devTokens(t *testing.T) (relays, clients, gateways map[string]bool) {
	t.Helper()
	f := portalDefaults(t)
	relays, clients, gateways = map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, r := range f.Relays {
		relays[r.Token] = true
	}
	for _, a := range f.Accounts {
		for _, c := range a.Clients {
			clients[c.Token] = true
		}
		for _, g := range a.Gateways {
			gateways[g.Token] = true
		}
	}
	return relays, clients, gateways
}

// portalConfig is the part of portalmock/default.yaml the tests read.
type portalConfig struct {
	Relays []struct {
		Token string `yaml:"token"`
	} `yaml:"relays"`
	Accounts []struct {
		Clients []struct {
			Token string `yaml:"token"`
		} `yaml:"clients"`
		Gateways []struct {
			Token string `yaml:"token"`
		} `yaml:"gateways"`
		Resources []struct {
			Type    string `yaml:"type"`
			Name    string `yaml:"name"`
			Address string `yaml:"address"`
		} `yaml:"resources"`
	} `yaml:"accounts"`
}

func portalDefaults(t *testing.T) portalConfig {
	t.Helper()
	var f portalConfig
	if err := yaml.Unmarshal([]byte(readFile(t, "portalmock", "default.yaml")), &f); err != nil {
		t.Fatalf("portalmock/default.yaml: %v", err)
	}
	return f
}

// TestComposeWiring checks what makes the stack work once up: dev tokens the portal knows, the portal URL,
// a small relay port range and a stop grace period longer than the relay's drain.
func TestComposeWiring(t *testing.T) {
	c := loadCompose(t)
	relays, clients, gateways := devTokens(t)
	tokens := map[string]map[string]bool{"relay": relays, "client": clients, "gateway": gateways}

	var portal composeService
	var portalName string
	for name, s := range c.Services {
		if s.target() == "portal" {
			portal, portalName = s, name
		}
	}
	if portalName == "" {
		t.Fatal("no portal service")
	}
	_, portalPort, err := net.SplitHostPort(portal.env("LISTEN_ADDR"))
	if err != nil {
		t.Fatalf("portal LISTEN_ADDR %q: %v", portal.env("LISTEN_ADDR"), err)
	}
	portalHosts := map[string]bool{portalName: true, portal.Networks["internet"].IPv4: true}

	for _, name := range sortedKeys(c.Services) {
		s := c.Services[name]
		if want, ok := tokens[s.target()]; ok {
			if tok := s.env("SNOWGATE_TOKEN"); !want[tok] {
				t.Errorf("service %s: SNOWGATE_TOKEN %q is not a %s token of portalmock/default.yaml", name, tok, s.target())
			}
			u, err := url.Parse(s.env("SNOWGATE_API_URL"))
			if err != nil || u.Scheme != "ws" || !portalHosts[u.Hostname()] || u.Port() != portalPort {
				t.Errorf("service %s: SNOWGATE_API_URL %q does not point at the portal (ws://%s:%s)", name,
					s.env("SNOWGATE_API_URL"), portal.Networks["internet"].IPv4, portalPort)
			}
		}
		if s.target() != "relay" {
			continue
		}
		lo, err1 := strconv.Atoi(s.env("LOWEST_PORT"))
		hi, err2 := strconv.Atoi(s.env("HIGHEST_PORT"))
		if err1 != nil || err2 != nil || lo > hi || hi-lo+1 > 100 {
			t.Errorf("relay %s: port range %s-%s; want at most 100 ports (Docker handles large ranges badly)", name,
				s.env("LOWEST_PORT"), s.env("HIGHEST_PORT"))
		}
		drain := time.Duration(goConstInt64(t, "relay/config.go", "DefaultDrainTimeout"))
		if v := s.env("DRAIN_TIMEOUT"); v != "" {
			if drain, err = time.ParseDuration(v); err != nil {
				t.Errorf("relay %s: DRAIN_TIMEOUT %q: %v", name, v, err)
			}
		}
		grace, err := time.ParseDuration(s.StopGracePeriod)
		if err != nil || grace <= drain {
			t.Errorf("relay %s: stop_grace_period %q must be longer than the drain (%v), or Docker kills it mid-drain",
				name, s.StopGracePeriod, drain)
		}
	}
}

// TestComposeLab checks the NAT lab's plumbing: every site host on an internal network routes through a router
// service on that network, started through lab-entrypoint; routers and tunnel daemons get the privileges and
// sysctls their programs need; the gateway's DNS server is the resource host's dnsmasq, which answers every
// DNS resource of portalmock/default.yaml with the resource host's addresses.
func TestComposeLab(t *testing.T) {
	c := loadCompose(t)
	internal := map[string]bool{}
	for name, n := range c.Networks {
		internal[name] = n.Internal
	}
	owner := map[netip.Addr]string{} // address → service
	for name, s := range c.Services {
		for _, a := range s.addrs() {
			owner[a] = name
		}
	}
	hasCap := func(s composeService, cp string) bool {
		return s.Privileged || slices.Contains(s.CapAdd, cp) || slices.Contains(s.CapAdd, "CAP_"+cp)
	}

	for _, name := range sortedKeys(c.Services) {
		s := c.Services[name]
		switch s.target() {
		case "router":
			if !hasCap(s, "NET_ADMIN") {
				t.Errorf("router %s lacks NET_ADMIN (nftables, tc)", name)
			}
			for _, k := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
				if s.sysctl(k) != "1" {
					t.Errorf("router %s: sysctl %s=%q, want 1 (router.sh refuses to start without it)", name, k, s.sysctl(k))
				}
			}
			var wan, lan bool
			for n := range s.Networks {
				wan, lan = wan || !internal[n], lan || internal[n]
			}
			if !wan || !lan {
				t.Errorf("router %s must be on the internet and on one internal LAN (networks %v)", name, sortedKeys(s.Networks))
			}
		case "client", "gateway":
			if !hasCap(s, "NET_ADMIN") || (!s.Privileged && !slices.Contains(s.Devices, "/dev/net/tun:/dev/net/tun")) {
				t.Errorf("service %s needs NET_ADMIN and /dev/net/tun for kernel-TUN mode", name)
			}
			if s.target() == "gateway" && (s.sysctl("net.ipv4.ip_forward") != "1" || s.sysctl("net.ipv6.conf.all.forwarding") != "1") {
				t.Errorf("gateway %s: set the forwarding sysctls to 1", name)
			}
		}

		// A service on internal networks only has no default route unless lab-entrypoint sets one through
		// a router on one of its networks.
		onInternet := false
		for n := range s.Networks {
			onInternet = onInternet || !internal[n]
		}
		if len(s.Networks) == 0 || onInternet || s.target() == "resource" {
			continue // the resource host answers only on-link (the gateway masquerades its clients)
		}
		if !slices.Contains(s.Entrypoint, "/usr/local/bin/lab-entrypoint") {
			t.Errorf("service %s sits on internal networks only but is not started through lab-entrypoint", name)
		}
		for _, k := range []string{"ROUTER_IP4", "ROUTER_IP6"} {
			a, err := netip.ParseAddr(s.env(k))
			if err != nil {
				t.Errorf("service %s: %s=%q: %v", name, k, s.env(k), err)
				continue
			}
			if a.Is4() != (k == "ROUTER_IP4") {
				t.Errorf("service %s: %s=%s is of the wrong family", name, k, a)
			}
			r, ok := owner[a]
			if !ok || c.Services[r].target() != "router" {
				t.Errorf("service %s: %s=%s is not a router service's address", name, k, a)
				continue
			}
			shared := false
			for n, att := range c.Services[r].Networks {
				_, mine := s.Networks[n]
				shared = shared || (mine && (att.IPv4 == a.String() || att.IPv6 == a.String()))
			}
			if !shared {
				t.Errorf("service %s: router %s has %s on none of %s's networks", name, r, a, name)
			}
		}
	}

	// DNS: servers named by dns: are dnsmasq services' addresses (dnsmasq shares a service's namespace).
	dnsServers := map[string]bool{}
	var answers []string // --address=/domain/ip of every dnsmasq
	for _, name := range sortedKeys(c.Services) {
		s := c.Services[name]
		if len(s.Command) == 0 || s.Command[0] != "dnsmasq" {
			continue
		}
		host, ok := strings.CutPrefix(s.NetworkMode, "service:")
		if !ok {
			host = name
		}
		for _, a := range c.Services[host].addrs() {
			dnsServers[a.String()] = true
		}
		for _, arg := range s.Command[1:] {
			if v, ok := strings.CutPrefix(arg, "--address=/"); ok {
				answers = append(answers, v)
			}
		}
	}
	for _, name := range sortedKeys(c.Services) {
		for _, d := range c.Services[name].DNS {
			if !dnsServers[d] {
				t.Errorf("service %s: dns %s is not the address of a dnsmasq service", name, d)
			}
		}
	}
	if gw := c.Services["gateway"]; len(gw.DNS) == 0 {
		t.Error("the gateway has no dns: it could not resolve the portal's DNS resources")
	}
	for _, acct := range portalDefaults(t).Accounts {
		for _, r := range acct.Resources {
			if r.Type != "dns" {
				continue
			}
			name := strings.TrimLeft(r.Address, "*?.")
			var v4, v6 bool
			for _, ans := range answers {
				domain, ip, ok := strings.Cut(ans, "/")
				if !ok || (name != domain && !strings.HasSuffix(name, "."+domain)) {
					continue
				}
				a, err := netip.ParseAddr(ip)
				if err != nil {
					t.Errorf("dnsmasq --address=/%s: bad address", ans)
					continue
				}
				if svc, ok := owner[a]; !ok || c.Services[svc].target() != "resource" {
					t.Errorf("dnsmasq answers %s with %s, which is not the resource host's", domain, a)
				}
				v4, v6 = v4 || a.Is4(), v6 || a.Is6()
			}
			if !v4 || !v6 {
				t.Errorf("portal DNS resource %q (%s): dnsmasq answers A=%v AAAA=%v; want both", r.Name, r.Address, v4, v6)
			}
		}
	}
}
