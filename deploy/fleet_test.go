package deploy

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func relayEnvExample(t *testing.T) map[string]string {
	t.Helper()
	env, _ := parseEnvFile(t, "relay.env.example", readFile(t, "deploy", "systemd", "relay.env.example"))
	return env
}

func envInt(t *testing.T, env map[string]string, key string, def int64) int64 {
	t.Helper()
	v, ok := env[key]
	if !ok {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatalf("relay.env.example %s=%q: %v", key, v, err)
	}
	return n
}

// TestSysctl checks the UDP buffer maxima against what the relay asks for, and that the kernel's ephemeral
// ports stay out of the relay's port range.
func TestSysctl(t *testing.T) {
	text := readFile(t, "deploy", "relay-fleet", "sysctl.d", "60-snowgate-relay.conf")
	kv := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("not key = value: %q", line)
		}
		kv[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	env := relayEnvExample(t)
	need := goConstInt64(t, "relay/config.go", "DefaultSocketBuffer")
	need = max(need, envInt(t, env, "SOCKET_BUFFER", need))
	need = max(need, envInt(t, env, "RELAY_SOCKET_BUFFER", goConstInt64(t, "relay/config.go", "DefaultRelaySocketBuffer")))
	for _, k := range []string{"net.core.rmem_max", "net.core.wmem_max"} {
		n, err := strconv.ParseInt(kv[k], 10, 64)
		if err != nil || n < need {
			t.Errorf("%s = %q; want at least %d, the largest socket buffer the relay asks for", k, kv[k], need)
		}
	}
	lowest := envInt(t, env, "LOWEST_PORT", goConstInt64(t, "relay/config.go", "DefaultLowestPort"))
	r := strings.Fields(kv["net.ipv4.ip_local_port_range"])
	if len(r) != 2 {
		t.Fatalf("net.ipv4.ip_local_port_range = %q", kv["net.ipv4.ip_local_port_range"])
	}
	if hi, err := strconv.ParseInt(r[1], 10, 64); err != nil || hi >= lowest {
		t.Errorf("ip_local_port_range %v overlaps the relay ports from %d", r, lowest)
	}
}

var nftDefine = regexp.MustCompile(`(?m)^\s*define\s+(\w+)\s*=\s*(.+?)\s*$`)

func nftDefines(text string) map[string]string {
	d := map[string]string{}
	for _, m := range nftDefine.FindAllStringSubmatch(text, -1) {
		d[m[1]] = m[2]
	}
	return d
}

// nftUsable reports whether `nft -c` works here (it needs root and nf_tables), by checking a trivial ruleset.
func nftUsable(t *testing.T) (string, bool) {
	t.Helper()
	nft, err := exec.LookPath("nft")
	if err != nil {
		t.Log("nft not installed (Debian package nftables)")
		return "", false
	}
	f := filepath.Join(t.TempDir(), "probe.nft")
	if err := os.WriteFile(f, []byte("table inet snowgate_probe {\n\tchain c {\n\t\ttype filter hook input priority 0;\n\t}\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runTool(t, filepath.Dir(f), nft, "-c", "-f", f); err != nil {
		t.Logf("nft -c cannot check rulesets here (not root, or no nf_tables): %v %s", err, out)
		return "", false
	}
	return nft, true
}

// TestNftables checks the firewall's ports against relay.env.example and, where possible, its syntax with
// `nft -c` (check only, nothing is loaded).
func TestNftables(t *testing.T) {
	text := readFile(t, "deploy", "relay-fleet", "nftables", "snowgate-relay.nft")
	d := nftDefines(text)
	env := relayEnvExample(t)
	_, hport, err := net.SplitHostPort(env["HEALTH_CHECK_ADDR"])
	if err != nil {
		t.Fatalf("HEALTH_CHECK_ADDR: %v", err)
	}
	for k, want := range map[string]string{
		"turn_port":   env["LISTEN_PORT"],
		"relay_ports": env["LOWEST_PORT"] + "-" + env["HIGHEST_PORT"],
		"health_port": hport,
	} {
		if d[k] != want {
			t.Errorf("define %s = %q; relay.env.example says %q", k, d[k], want)
		}
	}
	nft, ok := nftUsable(t)
	if !ok {
		t.Skip("nft syntax check skipped")
	}
	if out, err := runTool(t, repoPath("deploy", "relay-fleet", "nftables"), nft, "-c", "-f", "snowgate-relay.nft"); err != nil {
		t.Errorf("nft -c -f snowgate-relay.nft: %v\n%s", err, out)
	}
}

// cloudInit is the part of the user-data the tests read.
type cloudInit struct {
	Packages   []string `yaml:"packages"`
	WriteFiles []struct {
		Path        string `yaml:"path"`
		Permissions string `yaml:"permissions"`
		Content     string `yaml:"content"`
	} `yaml:"write_files"`
	RunCmd []string `yaml:"runcmd"`
}

func parseCloudInit(t *testing.T, text string) (cloudInit, map[string]string) {
	t.Helper()
	if !strings.HasPrefix(text, "#cloud-config\n") {
		t.Fatal("user-data does not start with #cloud-config")
	}
	var ci cloudInit
	if err := yaml.Unmarshal([]byte(text), &ci); err != nil {
		t.Fatalf("cloud-init YAML: %v", err)
	}
	files := map[string]string{}
	for _, f := range ci.WriteFiles {
		files[f.Path] = f.Content
	}
	return ci, files
}

var placeholder = regexp.MustCompile(`\$\{(\w+)\}`)

// renderVars reads the variable list of render-user-data.
func renderVars(t *testing.T) []string {
	t.Helper()
	m := regexp.MustCompile(`(?s)vars=\(([^)]*)\)`).FindStringSubmatch(readFile(t, "deploy", "relay-fleet", "render-user-data"))
	if m == nil {
		t.Fatal("render-user-data: no vars=(...) list")
	}
	v := strings.Fields(m[1])
	sort.Strings(v)
	return v
}

// withoutAddressDefines drops the operator-specific address sets from an nftables file.
func withoutAddressDefines(s string) string {
	return regexp.MustCompile(`(?m)^\s*define (monitoring|admin)[46] = .*\n`).ReplaceAllString(s, "")
}

var update = flag.Bool("update", false, "rewrite the verbatim copies inside deploy/relay-fleet/cloud-init.yaml")

// replaceWriteFile replaces the content block of the write_files entry for path (a literal block indented 6
// spaces, as the template writes them) with content.
func replaceWriteFile(text, path, content string) (string, error) {
	lines := strings.SplitAfter(text, "\n")
	start := -1
	for i, l := range lines {
		if strings.TrimSpace(l) == "- path: "+path {
			for j := i + 1; j < len(lines) && j < i+5; j++ {
				if strings.TrimSpace(lines[j]) == "content: |" {
					start = j + 1
					break
				}
			}
			break
		}
	}
	if start < 0 {
		return "", fmt.Errorf("no write_files entry with a literal content block for %s", path)
	}
	end := start
	last := start // one past the last non-blank line of the block
	for ; end < len(lines); end++ {
		l := strings.TrimRight(lines[end], "\n")
		if l == "" {
			continue
		}
		if !strings.HasPrefix(l, "      ") {
			break
		}
		last = end + 1
	}
	var b strings.Builder
	for _, l := range strings.SplitAfter(content, "\n") {
		if strings.TrimSpace(l) == "" {
			b.WriteString(strings.TrimLeft(l, " \t"))
		} else if l != "" {
			b.WriteString("      " + l)
		}
	}
	return strings.Join(lines[:start], "") + b.String() + strings.Join(lines[last:], ""), nil
}

// TestCloudInitTemplate checks that the user-data template carries verbatim copies of the unit, sysctl and
// nftables files, names only relay variables the binary reads, and uses exactly render-user-data's
// placeholders.
func TestCloudInitTemplate(t *testing.T) {
	text := readFile(t, "deploy", "relay-fleet", "cloud-init.yaml")
	if *update {
		var err error
		for path, src := range map[string][]string{
			"/etc/systemd/system/snowgate-relay.service": {"deploy", "systemd", "snowgate-relay.service"},
			"/etc/sysctl.d/60-snowgate-relay.conf":       {"deploy", "relay-fleet", "sysctl.d", "60-snowgate-relay.conf"},
		} {
			if text, err = replaceWriteFile(text, path, readFile(t, src...)); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(repoPath("deploy", "relay-fleet", "cloud-init.yaml"), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Log("cloud-init.yaml updated (the nftables copy keeps its placeholders: edit it by hand)")
	}
	ci, files := parseCloudInit(t, text)

	for path, src := range map[string][]string{
		"/etc/systemd/system/snowgate-relay.service": {"deploy", "systemd", "snowgate-relay.service"},
		"/etc/sysctl.d/60-snowgate-relay.conf":       {"deploy", "relay-fleet", "sysctl.d", "60-snowgate-relay.conf"},
	} {
		if got, want := files[path], readFile(t, src...); got != want {
			t.Errorf("cloud-init.yaml %s differs from %s: go test ./deploy -run CloudInit -update", path, filepath.Join(src...))
		}
	}
	nft := readFile(t, "deploy", "relay-fleet", "nftables", "snowgate-relay.nft")
	if withoutAddressDefines(files["/etc/nftables.conf"]) != withoutAddressDefines(nft) {
		t.Error("cloud-init.yaml /etc/nftables.conf differs from nftables/snowgate-relay.nft beyond the address defines")
	}

	env, order := parseEnvFile(t, "cloud-init relay.env", files["/etc/snowgate/relay.env"])
	checkEnvNames(t, "cloud-init.yaml /etc/snowgate/relay.env", "snowgate-relay", order)
	example := relayEnvExample(t)
	for k, v := range env {
		if ev, ok := example[k]; ok && !placeholder.MatchString(v) && ev != v {
			t.Errorf("cloud-init relay.env %s=%q but relay.env.example says %q", k, v, ev)
		}
	}

	var used []string
	seen := map[string]bool{}
	for _, m := range placeholder.FindAllStringSubmatch(text, -1) {
		if !seen[m[1]] {
			seen[m[1]] = true
			used = append(used, m[1])
		}
	}
	sort.Strings(used)
	want := renderVars(t)
	if strings.Join(used, " ") != strings.Join(want, " ") {
		t.Errorf("cloud-init.yaml placeholders %v != render-user-data vars %v", used, want)
	}
	// envsubst also replaces the brace-less $NAME form of a listed variable: none may appear.
	for _, v := range want {
		if regexp.MustCompile(`\$` + v + `\b`).MatchString(text) {
			t.Errorf("cloud-init.yaml contains $%s without braces; envsubst would replace it", v)
		}
	}
	if strings.Contains(placeholder.ReplaceAllString(text, ""), "${") || strings.Contains(text, "%{") {
		t.Error("cloud-init.yaml has a dollar-brace or percent-brace sequence that is not a placeholder (breaks templatefile)")
	}
	if len(ci.RunCmd) == 0 || !strings.Contains(ci.RunCmd[0], "sha256sum -c") {
		t.Error("runcmd must verify the binary's SHA-256")
	}
}

// TestRenderUserData renders the template with example values through render-user-data and checks the
// result: valid YAML, no placeholder left, and (as root) an nftables ruleset `nft -c` accepts.
func TestRenderUserData(t *testing.T) {
	for _, tool := range []string{"bash", "envsubst"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (envsubst: Debian package gettext-base); render check skipped", tool)
		}
	}
	vals := map[string]string{
		"SNOWGATE_API_URL": "wss://portal.example.com", "SNOWGATE_TOKEN": "dev-relay-token",
		"PUBLIC_IP4_ADDR": "198.18.0.101", "PUBLIC_IP6_ADDR": "2001:db8:ffff::101",
		"RELAY_BINARY_URL":    "https://downloads.example.com/snowgate-relay",
		"RELAY_BINARY_SHA256": strings.Repeat("0", 64),
		"MONITORING4":         "192.0.2.0/24, 198.51.100.7", "MONITORING6": "2001:db8:1::/64",
		"ADMIN4": "203.0.113.0/24", "ADMIN6": "::1/128",
	}
	script, err := filepath.Abs(repoPath("deploy", "relay-fleet", "render-user-data"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), "bash", script)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for _, k := range renderVars(t) {
		v, ok := vals[k]
		if !ok {
			t.Fatalf("no example value for %s", k)
		}
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("render-user-data: %v", err)
	}
	if strings.Contains(string(out), "${") {
		t.Error("rendered user-data still has a placeholder")
	}
	_, files := parseCloudInit(t, string(out))
	env, _ := parseEnvFile(t, "rendered relay.env", files["/etc/snowgate/relay.env"])
	if env["PUBLIC_IP4_ADDR"] != vals["PUBLIC_IP4_ADDR"] || env["SNOWGATE_TOKEN"] != "" {
		t.Errorf("rendered relay.env (the token belongs in /etc/snowgate/relay-token): %v", env)
	}
	if tok := strings.TrimSpace(files["/etc/snowgate/relay-token"]); tok != vals["SNOWGATE_TOKEN"] {
		t.Errorf("rendered /etc/snowgate/relay-token = %q, want the token", tok)
	}
	if !strings.Contains(files["/etc/nftables.conf"], "define monitoring4 = { 192.0.2.0/24, 198.51.100.7 }") {
		t.Error("rendered nftables.conf lacks the monitoring set")
	}

	// Missing variable: refused.
	bad := exec.CommandContext(t.Context(), "bash", script)
	bad.Env = []string{"PATH=" + os.Getenv("PATH")}
	if err := bad.Run(); err == nil {
		t.Error("render-user-data succeeded without any variable set")
	}

	nft, ok := nftUsable(t)
	if !ok {
		return
	}
	f := filepath.Join(t.TempDir(), "nftables.conf")
	if err := os.WriteFile(f, []byte(files["/etc/nftables.conf"]), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runTool(t, filepath.Dir(f), nft, "-c", "-f", f); err != nil {
		t.Errorf("nft -c on the rendered nftables.conf: %v\n%s", err, out)
	}
}

// TestFleetScripts checks the shell scripts' syntax and that rolling-update reads endpoints and metrics the
// relay really serves.
func TestFleetScripts(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not installed")
	}
	for _, s := range []string{"render-user-data", "rolling-update"} {
		p := repoPath("deploy", "relay-fleet", s)
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode()&0o111 == 0 {
			t.Errorf("%s is not executable", s)
		}
		if out, err := runTool(t, ".", bash, "-n", p); err != nil {
			t.Errorf("bash -n %s: %v\n%s", s, err, out)
		}
	}
	ru := readFile(t, "deploy", "relay-fleet", "rolling-update")
	// The Prometheus exporter turns the OTel instrument "relay.allocations" into relay_allocations.
	if !strings.Contains(ru, "relay_allocations") || !stringLiterals(t, repoPath("relay"))["relay.allocations"] {
		t.Error(`rolling-update reads relay_allocations, but the relay has no "relay.allocations" instrument`)
	}
	if !strings.Contains(ru, "/readyz") || !stringLiterals(t, repoPath("internal", "telemetry"))["GET /readyz"] {
		t.Error("rolling-update polls /readyz, but internal/telemetry serves no GET /readyz")
	}
}
