package deploy

import (
	"bufio"
	"go/constant"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// unitFile is a parsed systemd unit: section → key → values in order (keys may repeat).
type unitFile map[string]map[string][]string

// parseUnit parses systemd's INI dialect: [Section], Key=Value, '#'/';' comments, '\' line continuation.
func parseUnit(text string) (unitFile, error) {
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	var pending string
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if pending == "" && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			pending += strings.TrimSuffix(line, "\\") + " "
			continue
		}
		line, pending = pending+line, ""
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return nil, &unitError{n, line}
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		u[section][k] = append(u[section][k], v)
	}
	return u, sc.Err()
}

type unitError struct {
	line int
	text string
}

func (e *unitError) Error() string {
	return "line " + strconv.Itoa(e.line) + ": not a key=value: " + e.text
}

// last is the effective value of a single-valued key.
func (u unitFile) last(section, key string) (string, bool) {
	v := u[section][key]
	if len(v) == 0 {
		return "", false
	}
	return v[len(v)-1], true
}

// unitSpec says what each unit must contain, and which binary and env example it goes with.
type unitSpec struct {
	file, bin, envExample string
	relay                 bool
	// role is "client" or "gateway" for the kernel-TUN daemons: CAP_NET_ADMIN, /dev/net/tun, root's state
	// and runtime directories, the token as a systemd credential (checkTunnelUnit).
	role string
	// maxExposure bounds `systemd-analyze security --offline`. The tunnel daemons cannot avoid root (uid 0
	// without other capabilities), CAP_NET_ADMIN, the host network and a device, which cost about 1.0.
	maxExposure float64
}

var units = []unitSpec{
	{file: "snowgate-relay.service", bin: "snowgate-relay", envExample: "relay.env.example", relay: true, maxExposure: 2.0},
	{file: "snowgate-portal.service", bin: "snowgate-portal", envExample: "portal.env.example", maxExposure: 2.0},
	{file: "snowgate-client.service", bin: "snowgate-client", envExample: "client.env.example", role: "client", maxExposure: 2.3},
	{file: "snowgate-gateway.service", bin: "snowgate-gateway", envExample: "gateway.env.example", role: "gateway", maxExposure: 2.3},
}

func loadUnit(t *testing.T, name string) unitFile {
	t.Helper()
	u, err := parseUnit(readFile(t, "deploy", "systemd", name))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return u
}

// TestSystemdUnits checks the hardening and the keys ecosystem.md §5 asks for, and cross-checks the units
// with their env examples and binaries.
func TestSystemdUnits(t *testing.T) {
	for _, spec := range units {
		t.Run(spec.file, func(t *testing.T) {
			u := loadUnit(t, spec.file)
			want := map[string]string{
				"NoNewPrivileges":         "yes",
				"ProtectSystem":           "strict",
				"ProtectHome":             "yes",
				"PrivateTmp":              "yes",
				"ProtectKernelTunables":   "yes",
				"ProtectKernelModules":    "yes",
				"ProtectControlGroups":    "yes",
				"RestrictNamespaces":      "yes",
				"RestrictSUIDSGID":        "yes",
				"MemoryDenyWriteExecute":  "yes",
				"LockPersonality":         "yes",
				"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
				"KillSignal":              "SIGTERM",
				"UMask":                   "0077",
			}
			if spec.role == "" {
				want["PrivateDevices"] = "yes"
			} else {
				// PrivateDevices=yes would hide /dev/net/tun: a closed device policy allowing just it instead.
				want["PrivateDevices"] = "no"
				want["DevicePolicy"] = "closed"
				want["DeviceAllow"] = "/dev/net/tun rw"
				want["CapabilityBoundingSet"] = "CAP_NET_ADMIN"
				want["Restart"] = "on-failure"
			}
			for k, v := range want {
				if got, ok := u.last("Service", k); !ok || got != v {
					t.Errorf("[Service] %s=%q, want %q", k, got, v)
				}
			}
			if !slices.Contains(u["Service"]["SystemCallFilter"], "@system-service") {
				t.Errorf("SystemCallFilter=%q lacks @system-service", u["Service"]["SystemCallFilter"])
			}
			dyn, _ := u.last("Service", "DynamicUser")
			user, _ := u.last("Service", "User")
			switch {
			case dyn == "yes":
			case spec.role != "" && user == "root":
				// Root without capabilities besides CAP_NET_ADMIN (checked above): see checkTunnelUnit.
			case user != "" && user != "root":
				if _, err := os.Stat(repoPath("deploy", "systemd", "snowgate.sysusers")); err != nil {
					t.Errorf("User=%s needs deploy/systemd/snowgate.sysusers: %v", user, err)
				}
			default:
				t.Error("neither DynamicUser=yes nor a non-root User=")
			}
			if wb, _ := u.last("Install", "WantedBy"); wb != "multi-user.target" {
				t.Errorf("[Install] WantedBy=%q, want multi-user.target", wb)
			}

			// ExecStart: the binary and its flags exist.
			execStart, ok := u.last("Service", "ExecStart")
			if !ok {
				t.Fatal("no ExecStart")
			}
			argv := strings.Fields(execStart)
			if filepath.Base(argv[0]) != spec.bin {
				t.Errorf("ExecStart runs %s, want %s", argv[0], spec.bin)
			}
			ix := newSourceIndex(t)
			ix.checkFlagNames(spec.file+" ExecStart", spec.bin, argv[1:])

			// Environment= lines and the env example name only variables the binary reads.
			var names []string
			for _, e := range u["Service"]["Environment"] {
				for _, kv := range strings.Fields(e) {
					k, _, _ := strings.Cut(strings.Trim(kv, `"`), "=")
					names = append(names, k)
				}
			}
			env, order := parseEnvFile(t, spec.envExample, readFile(t, "deploy", "systemd", spec.envExample))
			names = append(names, order...)
			ix.checkEnvNames(spec.file+" + "+spec.envExample, spec.bin, names)

			// EnvironmentFile points at /etc/snowgate/<env example without .example>.
			envFile := strings.TrimSuffix(spec.envExample, ".example")
			found := false
			for _, f := range u["Service"]["EnvironmentFile"] {
				found = found || strings.TrimPrefix(f, "-") == "/etc/snowgate/"+envFile
			}
			if !found {
				t.Errorf("EnvironmentFile=%v does not load /etc/snowgate/%s", u["Service"]["EnvironmentFile"], envFile)
			}

			if spec.relay {
				checkRelayUnit(t, u, env)
			}
			if spec.role != "" {
				checkTunnelUnit(t, spec, u, env)
			}
		})
	}
}

// checkRelayUnit: no capabilities unless the relay binds below 1024, a high file limit, and a stop timeout
// longer than the drain.
func checkRelayUnit(t *testing.T, u unitFile, env map[string]string) {
	t.Helper()
	port := int(goConstInt64(t, "relay/config.go", "DefaultListenPort"))
	if v := env["LISTEN_PORT"]; v != "" {
		var err error
		if port, err = strconv.Atoi(v); err != nil {
			t.Fatalf("LISTEN_PORT=%q: %v", v, err)
		}
	}
	caps, ok := u.last("Service", "CapabilityBoundingSet")
	switch {
	case !ok:
		t.Error("CapabilityBoundingSet missing")
	case port >= 1024 && caps != "":
		t.Errorf("CapabilityBoundingSet=%q; the relay binds %d ≥ 1024 and needs no capability", caps, port)
	case port < 1024 && caps != "CAP_NET_BIND_SERVICE":
		t.Errorf("CapabilityBoundingSet=%q; binding %d needs exactly CAP_NET_BIND_SERVICE", caps, port)
	}

	maxAllocs := goConstInt64(t, "relay/config.go", "DefaultMaxAllocations")
	if v := env["MAX_ALLOCATIONS"]; v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("MAX_ALLOCATIONS=%q: %v", v, err)
		}
		maxAllocs = n
	}
	nofile, _ := u.last("Service", "LimitNOFILE")
	if n, err := strconv.ParseInt(strings.Split(nofile, ":")[0], 10, 64); err != nil || n < maxAllocs+1024 {
		t.Errorf("LimitNOFILE=%q; want at least MAX_ALLOCATIONS+1024 = %d (one socket per allocation)", nofile, maxAllocs+1024)
	}

	drain := time.Duration(goConstInt64(t, "relay/config.go", "DefaultDrainTimeout"))
	if v := env["DRAIN_TIMEOUT"]; v != "" {
		var err error
		if drain, err = time.ParseDuration(v); err != nil {
			t.Fatalf("DRAIN_TIMEOUT=%q: %v", v, err)
		}
	}
	ts, _ := u.last("Service", "TimeoutStopSec")
	stop, err := parseSystemdDuration(ts)
	if err != nil || stop < drain+10*time.Second {
		t.Errorf("TimeoutStopSec=%q; want at least DRAIN_TIMEOUT (%v) + 10s so systemd never kills a draining relay", ts, drain)
	}

	if _, _, err := net.SplitHostPort(env["HEALTH_CHECK_ADDR"]); err != nil {
		t.Errorf("relay.env.example HEALTH_CHECK_ADDR=%q: %v", env["HEALTH_CHECK_ADDR"], err)
	}
}

// unitEnv returns the unit's Environment= assignments.
func unitEnv(u unitFile) map[string]string {
	env := map[string]string{}
	for _, e := range u["Service"]["Environment"] {
		for _, kv := range strings.Fields(e) {
			k, v, _ := strings.Cut(strings.Trim(kv, `"`), "=")
			env[k] = v
		}
	}
	return env
}

// checkTunnelUnit checks a client or gateway unit against what the daemon does: the token as the credential
// internal/cliconf reads, state and runtime directories where the root defaults put the device id and the
// status socket, the gateway's forwarding sysctls writable, and the client's resolv.conf writable together
// with its backup next to it.
func checkTunnelUnit(t *testing.T, spec unitSpec, u unitFile, env map[string]string) {
	t.Helper()
	cred := constant.StringVal(goConst(t, "internal/cliconf/cliconf.go", "CredentialName"))
	wantCred := cred + ":/etc/snowgate/" + spec.role + "-token"
	if !slices.Contains(u["Service"]["LoadCredential"], wantCred) {
		t.Errorf("LoadCredential=%v; want %s (cliconf reads $CREDENTIALS_DIRECTORY/%s)", u["Service"]["LoadCredential"], wantCred, cred)
	}
	uenv := unitEnv(u)
	for _, secret := range []string{"SNOWGATE_TOKEN", "SNOWGATE_TOKEN_FILE"} {
		if _, ok := env[secret]; ok {
			t.Errorf("%s sets %s: the token belongs in /etc/snowgate/%s-token (LoadCredential)", spec.envExample, secret, spec.role)
		}
		if _, ok := uenv[secret]; ok {
			t.Errorf("the unit sets %s: not needed, the credential is found by name", secret)
		}
	}

	// Root's default paths: /var/lib/snowgate/<role>-id and /run/snowgate/<role>.sock (checked against the
	// literals of internal/cliconf and internal/tunnel) inside the unit's state and runtime directories.
	state, _ := u.last("Service", "StateDirectory")
	runtime, _ := u.last("Service", "RuntimeDirectory")
	set := func(k string) bool { _, a := env[k]; _, b := uenv[k]; return a || b }
	if !set("SNOWGATE_ID_FILE") {
		if !dirLiterals(t, repoPath("internal", "cliconf"))["/var/lib/snowgate"] {
			t.Error(`internal/cliconf no longer keeps root's device id under "/var/lib/snowgate": update the unit and this test`)
		}
		if state != "snowgate" {
			t.Errorf("StateDirectory=%q; want snowgate (the device id file /var/lib/snowgate/%s-id)", state, spec.role)
		}
	}
	if !set("SNOWGATE_STATUS_SOCKET") {
		if !dirLiterals(t, repoPath("internal", "tunnel"))["/run/snowgate"] {
			t.Error(`internal/tunnel no longer puts root's status socket under "/run/snowgate": update the unit and this test`)
		}
		if runtime != "snowgate" {
			t.Errorf("RuntimeDirectory=%q; want snowgate (the status socket /run/snowgate/%s.sock)", runtime, spec.role)
		}
		// Both units share /run/snowgate: stopping one must not delete the other's socket.
		if p, _ := u.last("Service", "RuntimeDirectoryPreserve"); p != "yes" {
			t.Errorf("RuntimeDirectoryPreserve=%q; want yes (the directory is shared by client and gateway)", p)
		}
	}

	rw := map[string]bool{}
	for _, v := range u["Service"]["ReadWritePaths"] {
		for _, p := range strings.Fields(v) {
			rw[strings.TrimPrefix(p, "-")] = true
		}
	}
	if spec.role == "gateway" {
		for _, name := range []string{"sysctlIPv4Forward", "sysctlIPv6Forward"} {
			p := "/proc/sys/" + constant.StringVal(goConst(t, "internal/hostfwd/state.go", name))
			if !rw[p] {
				t.Errorf("ReadWritePaths lacks %s: the gateway writes it and ProtectKernelTunables=yes makes it read-only", p)
			}
		}
		if ps, _ := u.last("Service", "ProcSubset"); ps == "pid" {
			t.Error("ProcSubset=pid hides /proc/sys, where the gateway sets the forwarding sysctls")
		}
	}
	if spec.role == "client" && env["SNOWGATE_DNS_CONTROL"] == "etc-resolv-conf" {
		checkResolvConfAccess(t, u, uenv, rw, state)
	}
}

// checkResolvConfAccess: the client rewrites SNOWGATE_RESOLV_CONF in place and writes the backup
// (tundev.BackupSuffix) through a temporary file in the same directory, so both must be writable.
func checkResolvConfAccess(t *testing.T, u unitFile, uenv map[string]string, rw map[string]bool, state string) {
	t.Helper()
	suffix := constant.StringVal(goConst(t, "internal/tundev/config.go", "BackupSuffix"))
	path := uenv["SNOWGATE_RESOLV_CONF"]
	if path == "" {
		path = "/etc/resolv.conf"
	}
	dir := filepath.Dir(path)
	writable := func(p string) bool {
		for w := range rw {
			if p == w || strings.HasPrefix(p, w+"/") {
				return true
			}
		}
		return state != "" && (p == "/var/lib/"+state || strings.HasPrefix(p, "/var/lib/"+state+"/"))
	}
	if !writable(dir) {
		t.Errorf("the client keeps its resolv.conf backup at %s%s, but %s is not writable under ProtectSystem=strict", path, suffix, dir)
	}
	if path == "/etc/resolv.conf" {
		if !writable(path) {
			t.Error("/etc/resolv.conf is not writable: add it to ReadWritePaths")
		}
		return
	}
	// Any other path must be /etc/resolv.conf itself, bind-mounted, and a symlinked resolv.conf refused
	// (a bind mount follows the link, which the client would otherwise refuse to write through).
	bound := false
	for _, v := range u["Service"]["BindPaths"] {
		for _, b := range strings.Fields(v) {
			src, dst, _ := strings.Cut(strings.TrimPrefix(b, "-"), ":")
			bound = bound || (src == "/etc/resolv.conf" && dst == path)
		}
	}
	if !bound {
		t.Errorf("SNOWGATE_RESOLV_CONF=%s is not /etc/resolv.conf bind-mounted (BindPaths=/etc/resolv.conf:%s)", path, path)
	}
	guard := false
	for _, pre := range u["Service"]["ExecStartPre"] {
		guard = guard || (strings.Contains(pre, "-L /etc/resolv.conf") && strings.Contains(pre, "etc-resolv-conf"))
	}
	if !guard {
		t.Error("no ExecStartPre refuses a symbolic-link /etc/resolv.conf under etc-resolv-conf")
	}
}

// TestSystemdAnalyzeVerify runs `systemd-analyze verify` on copies of the units whose ExecStart points at a
// stub (the real binaries are not installed here), failing on any warning, and reports each unit's
// `systemd-analyze security --offline` exposure, failing above the unit's maxExposure.
func TestSystemdAnalyzeVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (Debian package systemd); only the INI checks ran")
	}
	dir := t.TempDir()
	for _, spec := range units {
		stub := filepath.Join(dir, spec.bin)
		if err := os.WriteFile(stub, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(readFile(t, "deploy", "systemd", spec.file), "/usr/local/bin/"+spec.bin, stub)
		path := filepath.Join(dir, spec.file)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := runTool(t, dir, sa, "verify", "--man=no", path)
		if err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("systemd-analyze verify %s: %v\n%s", spec.file, err, out)
		}
		out, err = runTool(t, dir, sa, "security", "--offline=yes", "--no-pager", path)
		if err != nil {
			t.Logf("systemd-analyze security --offline not usable here (%v); exposure not checked", err)
			continue
		}
		m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindStringSubmatch(out)
		if m == nil {
			t.Errorf("systemd-analyze security %s: no exposure level in output:\n%s", spec.file, out)
			continue
		}
		score, _ := strconv.ParseFloat(m[1], 64)
		t.Logf("%s: systemd-analyze security exposure %.1f", spec.file, score)
		if score > spec.maxExposure {
			t.Errorf("%s: exposure %.1f > %.1f; the hardening regressed:\n%s", spec.file, score, spec.maxExposure, out)
		}
	}
}

func TestParseUnit(t *testing.T) {
	u, err := parseUnit("# c\n[Service]\nA=1\nA=2\nExecStart=/bin/x \\\n  --y\n; c\n[Install]\nWantedBy=multi-user.target\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := u["Service"]["A"]; !slices.Equal(got, []string{"1", "2"}) {
		t.Errorf("A=%v", got)
	}
	if got, _ := u.last("Service", "ExecStart"); got != "/bin/x  --y" {
		t.Errorf("ExecStart=%q", got)
	}
	if _, err := parseUnit("A=1\n"); err == nil {
		t.Error("key outside a section accepted")
	}
}
