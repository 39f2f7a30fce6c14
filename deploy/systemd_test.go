package deploy

import (
	"bufio"
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
}

var units = []unitSpec{
	{file: "snowgate-relay.service", bin: "snowgate-relay", envExample: "relay.env.example", relay: true},
	{file: "snowgate-portal.service", bin: "snowgate-portal", envExample: "portal.env.example"},
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
				"PrivateDevices":          "yes",
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
			checkFlagNames(t, spec.file+" ExecStart", spec.bin, argv[1:])

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
			checkEnvNames(t, spec.file+" + "+spec.envExample, spec.bin, names)

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

// TestSystemdAnalyzeVerify runs `systemd-analyze verify` on copies of the units whose ExecStart points at a
// stub (the real binaries are not installed here), failing on any warning, and reports each unit's
// `systemd-analyze security --offline` exposure, failing above 2.0.
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
		if score > 2.0 {
			t.Errorf("%s: exposure %.1f > 2.0; the hardening regressed:\n%s", spec.file, score, out)
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
