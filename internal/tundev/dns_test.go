package tundev

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

const systemResolv = "# from DHCP\noptions edns0\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nsearch lan.example\n"

// newDNS returns a DNSControl on a resolv.conf in a temporary directory holding content.
func newDNS(t *testing.T, mode DNSMode, content string) (*DNSControl, DNSConfig) {
	t.Helper()
	dir := t.TempDir()
	cfg := DNSConfig{Mode: mode, ResolvConfPath: filepath.Join(dir, "resolv.conf")}
	if err := os.WriteFile(cfg.ResolvConfPath, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := NewDNSControl(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c, cfg.withDefaults()
}

var (
	sentinel4 = netip.MustParseAddr("100.100.111.1")
	sentinel6 = netip.MustParseAddr("fd00:2021:1111:8000:100:100:111:0")
)

func TestDNSApplyRestore(t *testing.T) {
	c, cfg := newDNS(t, DNSModeEtcResolvConf, systemResolv)
	before, err := os.Stat(cfg.ResolvConfPath)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.BackupPath != cfg.ResolvConfPath+".snowgate-backup" {
		t.Errorf("default backup path %q", cfg.BackupPath)
	}

	if err := c.Apply([]netip.Addr{sentinel4, sentinel6}, "corp.example"); err != nil {
		t.Fatal(err)
	}
	got := readFile(t, cfg.ResolvConfPath)
	if !strings.HasPrefix(got, resolvHeader) || !strings.Contains(got, "\nnameserver 100.100.111.1\nnameserver fd00:2021:1111:8000:100:100:111:0\nsearch corp.example\n") {
		t.Errorf("resolv.conf after Apply:\n%s", got)
	}
	if ns := parseNameservers([]byte(got)); !slices.Equal(ns, []netip.Addr{sentinel4, sentinel6}) {
		t.Errorf("nameservers in the written file: %v", ns)
	}
	if strings.Contains(got, "192.0.2.53") || strings.Contains(got, "lan.example\n") {
		t.Errorf("the original's servers or search list survived:\n%s", got)
	}
	after, _ := os.Stat(cfg.ResolvConfPath)
	if !os.SameFile(before, after) {
		t.Error("Apply replaced resolv.conf (new inode) instead of rewriting it in place")
	}
	if b := readFile(t, cfg.BackupPath); b != systemResolv {
		t.Errorf("backup:\n%s\nwant the original", b)
	}
	orig, err := c.OriginalNameservers()
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("fe80::1%eth0")}; !slices.Equal(orig, want) {
		t.Errorf("OriginalNameservers while applied = %v, want %v", orig, want)
	}

	// A second Apply keeps the original backup.
	if err := c.Apply([]netip.Addr{sentinel4}, ""); err != nil {
		t.Fatal(err)
	}
	if b := readFile(t, cfg.BackupPath); b != systemResolv {
		t.Errorf("backup after a second Apply:\n%s", b)
	}
	if got := readFile(t, cfg.ResolvConfPath); strings.Contains(got, "search") || strings.Count(got, "nameserver") != 1 {
		t.Errorf("resolv.conf after the second Apply:\n%s", got)
	}

	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, cfg.ResolvConfPath); got != systemResolv {
		t.Errorf("after Restore:\n%s\nwant the original", got)
	}
	after, _ = os.Stat(cfg.ResolvConfPath)
	if !os.SameFile(before, after) {
		t.Error("Restore replaced resolv.conf instead of rewriting it in place")
	}
	if exists(cfg.BackupPath) {
		t.Error("backup not removed by Restore")
	}
	if err := c.Restore(); err != nil {
		t.Errorf("second Restore: %v", err)
	}
	orig, err = c.OriginalNameservers()
	if err != nil || len(orig) != 2 {
		t.Errorf("OriginalNameservers after Restore = %v, %v", orig, err)
	}
}

func TestDNSRestoreKeepsANewerFile(t *testing.T) {
	c, cfg := newDNS(t, DNSModeEtcResolvConf, systemResolv)
	if err := c.Apply([]netip.Addr{sentinel4}, ""); err != nil {
		t.Fatal(err)
	}
	const renewed = "nameserver 198.51.100.53\n"
	if err := os.WriteFile(cfg.ResolvConfPath, []byte(renewed), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, cfg.ResolvConfPath); got != renewed {
		t.Errorf("Restore overwrote a file someone rewrote meanwhile:\n%s", got)
	}
	if exists(cfg.BackupPath) {
		t.Error("stale backup not removed")
	}
}

func TestDNSApplyAfterForeignRewriteBacksUpTheNewFile(t *testing.T) {
	c, cfg := newDNS(t, DNSModeEtcResolvConf, systemResolv)
	// A stale backup from a crashed run, but the file was rewritten by DHCP since.
	if err := os.WriteFile(cfg.BackupPath, []byte("nameserver 203.0.113.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Apply([]netip.Addr{sentinel4}, ""); err != nil {
		t.Fatal(err)
	}
	if b := readFile(t, cfg.BackupPath); b != systemResolv {
		t.Errorf("backup %q, want the current file", b)
	}
}

func TestDNSRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "stub-resolv.conf")
	if err := os.WriteFile(target, []byte("nameserver 127.0.0.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "resolv.conf")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	c, err := NewDNSControl(DNSConfig{Mode: DNSModeEtcResolvConf, ResolvConfPath: link}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Apply([]netip.Addr{sentinel4}, ""); !errors.Is(err, ErrResolvConfSymlink) {
		t.Fatalf("Apply on a symlink: %v, want ErrResolvConfSymlink", err)
	}
	if got := readFile(t, target); got != "nameserver 127.0.0.53\n" {
		t.Errorf("symlink target changed: %q", got)
	}
	if exists(link + BackupSuffix) {
		t.Error("a backup was written although Apply refused")
	}
	ns, err := c.OriginalNameservers() // reading through the link is fine
	if err != nil || !slices.Equal(ns, []netip.Addr{netip.MustParseAddr("127.0.0.53")}) {
		t.Errorf("OriginalNameservers through a symlink = %v, %v", ns, err)
	}
}

func TestDNSDisabledTouchesNothing(t *testing.T) {
	c, cfg := newDNS(t, "", systemResolv)
	if c.Mode() != DNSModeDisabled {
		t.Errorf("zero mode = %q, want disabled", c.Mode())
	}
	if err := c.Apply([]netip.Addr{sentinel4}, "corp.example"); err != nil {
		t.Fatal(err)
	}
	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, cfg.ResolvConfPath); got != systemResolv || exists(cfg.BackupPath) {
		t.Errorf("disabled mode changed files: %q, backup %v", got, exists(cfg.BackupPath))
	}
	ns, err := c.OriginalNameservers()
	if err != nil || len(ns) != 2 {
		t.Errorf("OriginalNameservers = %v, %v", ns, err)
	}
}

func TestDNSOursWithoutBackup(t *testing.T) {
	c, cfg := newDNS(t, DNSModeEtcResolvConf, resolvHeader+"\nnameserver 100.100.111.1\n")
	if _, err := c.OriginalNameservers(); !errors.Is(err, ErrNoOriginalDNS) {
		t.Errorf("OriginalNameservers: %v, want ErrNoOriginalDNS", err)
	}
	if err := c.Apply([]netip.Addr{sentinel4}, ""); !errors.Is(err, ErrNoOriginalDNS) {
		t.Errorf("Apply: %v, want ErrNoOriginalDNS", err)
	}
	if exists(cfg.BackupPath) {
		t.Error("backed up our own file as the original")
	}
}

func TestDNSApplyValidates(t *testing.T) {
	c, _ := newDNS(t, DNSModeEtcResolvConf, systemResolv)
	for _, tc := range []struct {
		name   string
		ns     []netip.Addr
		search string
	}{
		{"no servers", nil, ""},
		{"invalid server", []netip.Addr{{}}, ""},
		{"space in search", []netip.Addr{sentinel4}, "a b"},
		{"newline in search", []netip.Addr{sentinel4}, "a\nnameserver 1.1.1.1"},
		{"empty label", []netip.Addr{sentinel4}, "a..b"},
	} {
		if err := c.Apply(tc.ns, tc.search); err == nil {
			t.Errorf("%s: Apply accepted it", tc.name)
		}
	}
	if _, err := NewDNSControl(DNSConfig{Mode: "systemd-resolved"}, nil); err == nil {
		t.Error("unknown mode accepted")
	}
	if _, err := ParseDNSMode("etc-resolv-conf"); err != nil {
		t.Error(err)
	}
}

func TestParseNameservers(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"nameserver 192.0.2.1\n", []string{"192.0.2.1"}},
		{"  nameserver\t2001:db8::1  # comment\n", []string{"2001:db8::1"}},
		{"# nameserver 192.0.2.1\n; nameserver 192.0.2.2\n", nil},
		{"nameserver\nnameserver bogus\nnameservers 192.0.2.3\n", nil},
		{"search x\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\noptions ndots:2", []string{"192.0.2.1", "fe80::1%eth0"}},
		{"nameserver 192.0.2.1\r\n", []string{"192.0.2.1"}},
	} {
		var got []string
		for _, a := range parseNameservers([]byte(tc.in)) {
			got = append(got, a.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("parseNameservers(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func FuzzParseNameservers(f *testing.F) {
	f.Add([]byte(systemResolv))
	f.Add([]byte("nameserver 100.100.111.1\nnameserver fd00:2021:1111:8000::1\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		addrs := parseNameservers(b)
		for _, a := range addrs {
			if !a.IsValid() {
				t.Fatalf("invalid address parsed from %q", b)
			}
		}
		// What we write, we read back.
		if len(addrs) > 0 {
			if got := parseNameservers(renderResolvConf(addrs, "", "/backup")); !slices.Equal(got, addrs) {
				t.Fatalf("round trip %v -> %v", addrs, got)
			}
		}
	})
}
