package deploy

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// composeFile is the part of docker-compose.yml the tests look at.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Networks map[string]struct {
		IPAM struct {
			Config []struct {
				Subnet string `yaml:"subnet"`
			} `yaml:"config"`
		} `yaml:"ipam"`
	} `yaml:"networks"`
}

type composeService struct {
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
		Target     string `yaml:"target"`
	} `yaml:"build"`
	Image           string         `yaml:"image"`
	Environment     map[string]any `yaml:"environment"`
	StopGracePeriod string         `yaml:"stop_grace_period"`
	Networks        map[string]struct {
		IPv4 string `yaml:"ipv4_address"`
		IPv6 string `yaml:"ipv6_address"`
	} `yaml:"networks"`
}

func (s composeService) env(k string) string {
	v, ok := s.Environment[k]
	if !ok || v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

// uncommentFuture returns the compose text with the blocks between "# >>> future" and "# <<< future"
// uncommented (one leading '#' removed per line): the client/gateway/router part of the NAT lab.
func uncommentFuture(text string) string {
	var b strings.Builder
	in := false
	for _, line := range strings.SplitAfter(text, "\n") {
		trimmed := strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(trimmed, "# >>> future"):
			in = true
		case strings.HasPrefix(trimmed, "# <<< future"):
			in = false
		case in && strings.HasPrefix(trimmed, "#"):
			b.WriteString(strings.TrimPrefix(line, "#"))
		default:
			b.WriteString(line)
		}
	}
	return b.String()
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

// TestComposeConfig validates docker-compose.yml with `docker-compose config -q`, both as it is and with the
// future NAT-lab block uncommented.
func TestComposeConfig(t *testing.T) {
	cmd, ok := composeCommand()
	if !ok {
		t.Skip("docker-compose not installed (Debian package docker-compose, or the docker compose plugin); " +
			"compose validation skipped")
	}
	text := readFile(t, "docker-compose.yml")
	abs, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("current", func(t *testing.T) {
		args := append(cmd[1:], "-f", "docker-compose.yml", "config", "-q")
		if out, err := runTool(t, abs, cmd[0], args...); err != nil || strings.TrimSpace(out) != "" {
			t.Fatalf("%s %s: %v\n%s", cmd[0], strings.Join(args, " "), err, out)
		}
	})
	t.Run("future", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "docker-compose.yml"), []byte(uncommentFuture(text)), 0o644); err != nil {
			t.Fatal(err)
		}
		args := append(cmd[1:], "-f", "docker-compose.yml", "config", "-q")
		if out, err := runTool(t, dir, cmd[0], args...); err != nil || strings.TrimSpace(out) != "" {
			t.Fatalf("future block uncommented: %s %s: %v\n%s", cmd[0], strings.Join(args, " "), err, out)
		}
	})
}

// binaryForTarget maps a Dockerfile target of a compose service to the binary it runs.
func binaryForTarget(target string) string { return "snowgate-" + target }

// TestComposeEnvironment checks every environment variable of every service against its binary's sources
// (services whose binary does not exist yet, in the future block, are only parsed).
func TestComposeEnvironment(t *testing.T) {
	text := readFile(t, "docker-compose.yml")
	for _, variant := range []struct{ name, text string }{{"current", text}, {"future", uncommentFuture(text)}} {
		c := parseCompose(t, variant.text)
		for _, name := range sortedKeys(c.Services) {
			s := c.Services[name]
			if s.Build == nil || s.Build.Target == "" {
				continue // third-party image (test resources)
			}
			if s.Build.Dockerfile != "deploy/docker/Dockerfile" || s.Build.Context != "." {
				t.Errorf("%s: service %s builds %s in %s; want deploy/docker/Dockerfile in .", variant.name, name,
					s.Build.Dockerfile, s.Build.Context)
			}
			bin := binaryForTarget(s.Build.Target)
			if _, ok := binaryDir(bin); !ok {
				if variant.name == "current" {
					t.Errorf("service %s runs %s, which does not exist: move it into the future block", name, bin)
				}
				continue
			}
			checkEnvNames(t, variant.name+": compose service "+name, bin, sortedKeys(s.Environment))
		}
	}
}

// TestComposeAddresses checks that the networks use only the lab ranges and that every fixed address sits in
// its network's subnet, and that the relays advertise their own addresses.
func TestComposeAddresses(t *testing.T) {
	c := parseCompose(t, uncommentFuture(readFile(t, "docker-compose.yml")))
	subnets := map[string][]netip.Prefix{}
	for name, n := range c.Networks {
		for _, cfg := range n.IPAM.Config {
			p, err := netip.ParsePrefix(cfg.Subnet)
			if err != nil {
				t.Errorf("network %s: bad subnet %q: %v", name, cfg.Subnet, err)
				continue
			}
			if !inLabRanges(p) {
				t.Errorf("network %s: subnet %s is outside the lab ranges %v", name, p, labRanges)
			}
			subnets[name] = append(subnets[name], p)
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
				if other, dup := seen[addr]; dup {
					t.Errorf("services %s and %s share %s", other, name, addr)
				}
				seen[addr] = name
			}
		}
		if s.Build != nil && s.Build.Target == "relay" {
			inet := s.Networks["internet"]
			if s.env("PUBLIC_IP4_ADDR") != inet.IPv4 || s.env("PUBLIC_IP6_ADDR") != inet.IPv6 {
				t.Errorf("relay %s advertises %s/%s but sits at %s/%s on the internet", name,
					s.env("PUBLIC_IP4_ADDR"), s.env("PUBLIC_IP6_ADDR"), inet.IPv4, inet.IPv6)
			}
		}
	}
}

// devTokens reads the tokens of the portal's embedded development configuration.
func devTokens(t *testing.T) (relays, clients, gateways map[string]bool) {
	t.Helper()
	var f struct {
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
		} `yaml:"accounts"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, "portalmock", "default.yaml")), &f); err != nil {
		t.Fatalf("portalmock/default.yaml: %v", err)
	}
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

// TestComposeWiring checks what makes the stack work once up: dev tokens the portal knows, the portal URL,
// a small relay port range and a stop grace period longer than the relay's drain.
func TestComposeWiring(t *testing.T) {
	c := parseCompose(t, uncommentFuture(readFile(t, "docker-compose.yml")))
	relays, clients, gateways := devTokens(t)
	tokens := map[string]map[string]bool{"relay": relays, "client": clients, "gateway": gateways}

	var portal composeService
	var portalName string
	for name, s := range c.Services {
		if s.Build != nil && s.Build.Target == "portal" {
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
		if s.Build == nil {
			continue
		}
		if want, ok := tokens[s.Build.Target]; ok {
			if tok := s.env("SNOWGATE_TOKEN"); !want[tok] {
				t.Errorf("service %s: SNOWGATE_TOKEN %q is not a %s token of portalmock/default.yaml", name, tok, s.Build.Target)
			}
			u, err := url.Parse(s.env("SNOWGATE_API_URL"))
			if err != nil || u.Scheme != "ws" || !portalHosts[u.Hostname()] || u.Port() != portalPort {
				t.Errorf("service %s: SNOWGATE_API_URL %q does not point at the portal (ws://%s:%s)", name,
					s.env("SNOWGATE_API_URL"), portalName, portalPort)
			}
		}
		if s.Build.Target != "relay" {
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

// TestUncommentFuture pins the uncommenting rules the compose tests rely on.
func TestUncommentFuture(t *testing.T) {
	in := "a: 1\n# >>> future\n## prose\n#  b: 2\n#\n# <<< future\n# c\n"
	want := "a: 1\n# prose\n  b: 2\n\n# c\n"
	if got := uncommentFuture(in); got != want {
		t.Errorf("uncommentFuture:\n%q\nwant\n%q", got, want)
	}
}
