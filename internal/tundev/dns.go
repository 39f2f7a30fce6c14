package tundev

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/snowgate/snowgate/internal/telemetry"
)

// resolvHeader is the first line of every resolv.conf DNSControl writes. Its presence tells
// DNSControl that the file is still the one it wrote (and not a newer one from a DHCP client or an
// administrator), which decides whether restoring the backup is safe.
const resolvHeader = "# BEGIN snowgate DNS configuration"

// DNSControl points the system resolver at the tunnel's DNS servers and puts the original
// configuration back. Its methods are safe for concurrent use.
//
// In DNSModeEtcResolvConf, Apply rewrites resolv.conf in place after saving the original to the
// backup file; Restore writes the original back and removes the backup. In DNSModeDisabled both do
// nothing. OriginalNameservers works in either mode.
type DNSControl struct {
	cfg DNSConfig
	log *slog.Logger

	mu sync.Mutex // serialises file operations
}

// NewDNSControl returns a DNSControl for cfg (defaults filled in); logger nil means slog.Default().
// It does not touch any file.
func NewDNSControl(cfg DNSConfig, logger *slog.Logger) (*DNSControl, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	return &DNSControl{cfg: cfg, log: logger}, nil
}

// Mode returns the configured mode.
func (c *DNSControl) Mode() DNSMode { return c.cfg.Mode }

// Apply makes nameservers the system's resolvers and searchDomain (may be empty) its search list.
// Call it again whenever they change; the backup keeps the original from the first call.
//
// The file is rewritten in place (truncate and write), never replaced by rename: resolv.conf may be
// a bind mount (Docker, `ip netns exec` with /etc/netns/<ns>/resolv.conf), which a rename would
// fail on or silently detach from. Before the first rewrite the original is saved to the backup file
// (written to a temporary file, synced and renamed, so a crash never leaves a torn backup).
//
// A resolv.conf that is a symbolic link is refused with ErrResolvConfSymlink: the link means another
// program owns the resolver configuration (systemd-resolved's stub-resolv.conf, resolvconf,
// NetworkManager) and would overwrite our file, or be confused by it, at any time; writing through
// the link would also change that program's private file. Such systems need DNSModeDisabled (or a
// resolved-aware mode). This is also what Firezone's etc-resolv-conf mode does.
//
// glibc reads at most three nameserver lines (MAXNS); further ones are written but ignored by it.
func (c *DNSControl) Apply(nameservers []netip.Addr, searchDomain string) error {
	if c.cfg.Mode != DNSModeEtcResolvConf {
		return nil
	}
	if len(nameservers) == 0 {
		return errors.New("tundev: DNS apply: no nameservers given")
	}
	for _, ns := range nameservers {
		if !ns.IsValid() {
			return errors.New("tundev: DNS apply: invalid nameserver address")
		}
	}
	if searchDomain != "" && !validSearchDomain(searchDomain) {
		return fmt.Errorf("tundev: DNS apply: invalid search domain %q", searchDomain)
	}
	c.mu.Lock()
	defer c.mu.Unlock()

	cur, err := readRegular(c.cfg.ResolvConfPath)
	if err != nil {
		return fmt.Errorf("tundev: DNS apply: %w", err)
	}
	ours := isOurs(cur)
	_, statErr := os.Stat(c.cfg.BackupPath)
	backupExists := statErr == nil
	if statErr != nil && !errors.Is(statErr, fs.ErrNotExist) {
		return fmt.Errorf("tundev: DNS apply: stat backup: %w", statErr)
	}
	switch {
	case ours && backupExists:
		// A previous Apply (of this run, or of a run that crashed and was not cleaned up):
		// the backup holds the original.
	case ours && !backupExists:
		return fmt.Errorf("tundev: DNS apply: %s: %w; remove its snowgate header lines and restore the system's nameservers by hand", c.cfg.ResolvConfPath, ErrNoOriginalDNS)
	default:
		if backupExists {
			c.log.Info("resolv.conf was rewritten by someone else since the last backup; backing up the new file", "path", c.cfg.ResolvConfPath, "backup", c.cfg.BackupPath)
		}
		if err := writeFileAtomic(c.cfg.BackupPath, cur); err != nil {
			return fmt.Errorf("tundev: DNS apply: back up %s: %w", c.cfg.ResolvConfPath, err)
		}
	}
	if err := writeInPlace(c.cfg.ResolvConfPath, renderResolvConf(nameservers, searchDomain, c.cfg.BackupPath)); err != nil {
		return fmt.Errorf("tundev: DNS apply: %w", err)
	}
	c.log.Info("pointed the system resolver at the tunnel", "path", c.cfg.ResolvConfPath, "nameservers", nameservers, "search", searchDomain)
	return nil
}

// Restore puts the original resolv.conf back (in place) and removes the backup. If the file no
// longer carries snowgate's header, someone rewrote it while the tunnel ran (a DHCP renewal, an
// administrator): that newer file is kept and only the backup is removed. Restore without a backup
// does nothing, so calling it twice is harmless.
func (c *DNSControl) Restore() error {
	if c.cfg.Mode != DNSModeEtcResolvConf {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := restoreDNS(c.cfg, c.log)
	return err
}

// OriginalNameservers returns the system's own nameservers, the ones in effect before Apply: from
// the backup if one exists, else from resolv.conf itself (following a symbolic link, which is
// harmless for reading). The client uses them as its upstream resolvers. An empty result is not an
// error; ErrNoOriginalDNS means resolv.conf is snowgate's and no backup exists.
func (c *DNSControl) OriginalNameservers() ([]netip.Addr, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, err := os.ReadFile(c.cfg.BackupPath)
	if err == nil {
		return parseNameservers(b), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("tundev: read DNS backup: %w", err)
	}
	b, err = os.ReadFile(c.cfg.ResolvConfPath)
	if err != nil {
		return nil, fmt.Errorf("tundev: read resolv.conf: %w", err)
	}
	if isOurs(b) {
		return nil, fmt.Errorf("tundev: %s: %w", c.cfg.ResolvConfPath, ErrNoOriginalDNS)
	}
	return parseNameservers(b), nil
}

// restoreDNS restores resolv.conf from cfg's backup if one exists and reports whether it found one.
// It is Restore's body and Cleanup's crash recovery.
func restoreDNS(cfg DNSConfig, log *slog.Logger) (bool, error) {
	backup, err := os.ReadFile(cfg.BackupPath)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return true, fmt.Errorf("tundev: DNS restore: read backup: %w", err)
	}
	cur, err := readRegular(cfg.ResolvConfPath)
	switch {
	case errors.Is(err, ErrResolvConfSymlink), errors.Is(err, fs.ErrNotExist):
		log.Info("resolv.conf was replaced while snowgate ran; keeping it and removing the stale backup", "path", cfg.ResolvConfPath, "backup", cfg.BackupPath, telemetry.Err(err))
	case err != nil:
		return true, fmt.Errorf("tundev: DNS restore: %w", err)
	case isOurs(cur):
		if err := writeInPlace(cfg.ResolvConfPath, backup); err != nil {
			return true, fmt.Errorf("tundev: DNS restore: %w", err)
		}
		log.Info("restored the original resolv.conf", "path", cfg.ResolvConfPath, "backup", cfg.BackupPath)
	default:
		log.Info("resolv.conf was rewritten while snowgate ran; keeping it and removing the stale backup", "path", cfg.ResolvConfPath, "backup", cfg.BackupPath)
	}
	if err := os.Remove(cfg.BackupPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return true, fmt.Errorf("tundev: DNS restore: remove backup: %w", err)
	}
	return true, nil
}

// readRegular reads path, refusing symbolic links (ErrResolvConfSymlink) and non-regular files.
func readRegular(path string) ([]byte, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		target, _ := os.Readlink(path)
		return nil, fmt.Errorf("%s -> %s: %w", path, target, ErrResolvConfSymlink)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (mode %s)", path, fi.Mode())
	}
	return os.ReadFile(path)
}

func isOurs(b []byte) bool { return bytes.HasPrefix(b, []byte(resolvHeader)) }

// renderResolvConf returns the file Apply writes.
func renderResolvConf(nameservers []netip.Addr, search, backup string) []byte {
	var b bytes.Buffer
	b.WriteString(resolvHeader + " (written by snowgate; do not edit)\n")
	fmt.Fprintf(&b, "# The original is saved at %s and is put back when snowgate stops.\n", backup)
	b.WriteString("# If snowgate is not running, its last run was killed: its next start restores the original.\n")
	for _, ns := range nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	if search != "" {
		fmt.Fprintf(&b, "search %s\n", search)
	}
	return b.Bytes()
}

// parseNameservers returns the addresses of the "nameserver" lines of a resolv.conf, in order.
// Malformed lines are skipped, as the resolver itself does.
func parseNameservers(b []byte) []netip.Addr {
	var out []netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		addr, err := netip.ParseAddr(fields[1])
		if err != nil {
			continue
		}
		out = append(out, addr)
	}
	return out
}

// validSearchDomain accepts a DNS name usable on a resolv.conf search line.
func validSearchDomain(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			if !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				return false
			}
		}
	}
	return true
}

// writeInPlace truncates and rewrites path, keeping its inode (and so any bind mount over it), and
// syncs it.
func writeInPlace(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return fmt.Errorf("rewrite %s: %w", path, err)
	}
	return nil
}

// writeFileAtomic writes data to path through a synced temporary file in the same directory and a
// rename, then syncs the directory.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(data)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
