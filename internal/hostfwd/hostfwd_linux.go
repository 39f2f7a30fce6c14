//go:build linux

package hostfwd

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/snowgate/snowgate/internal/telemetry"
)

// Chain names inside the table.
const (
	chainForward     = "forward"
	chainPostrouting = "postrouting"
)

// Forwarding is the gateway's kernel forwarding set-up: IP forwarding on and the nftables table.
// Close undoes both. Its methods are safe for concurrent use.
type Forwarding struct {
	cfg   Config
	log   *slog.Logger
	nft   *nftables.Conn // lasting: bound to the namespace Enable ran in
	table *nftables.Table

	mu      sync.Mutex
	closed  bool
	sysctls []*sysctl
}

// sysctl is one /proc/sys file, kept open from Enable to Close: an open /proc/sys/net file stays
// bound to the network namespace it was opened in, so Close restores the right namespace's value
// from any thread.
type sysctl struct {
	key  string
	f    *os.File
	prev string
	// readOnly: /proc/sys is mounted read-only (a container without privileges) and the value is
	// already "1", so every write of the value it holds is a no-op.
	readOnly bool
}

// Enable turns the host (the network namespace of the calling OS thread) into the tunnel's
// router. It first removes a table left by a killed previous run (Cleanup), then installs the
// nftables table (recording the current forwarding sysctls in it), then sets net.ipv4.ip_forward
// and net.ipv6.conf.all.forwarding to 1. IPv6 is skipped with a warning if the kernel has no IPv6.
func Enable(cfg Config) (*Forwarding, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	nft, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("hostfwd: enable: nftables: %w", err)
	}
	f := &Forwarding{cfg: cfg, log: cfg.Logger.With("nft_table", cfg.TableName), nft: nft}
	if err := cleanup(cfg, nft, f.log); err != nil {
		nft.CloseLasting()
		return nil, err
	}
	prior := priorSysctls{}
	for _, key := range sysctlKeys {
		s, err := openSysctl(key)
		if errors.Is(err, fs.ErrNotExist) && key == sysctlIPv6Forward {
			f.log.Warn("IPv6 is not available in this kernel; forwarding IPv4 only", telemetry.Err(err))
			continue
		}
		if err != nil {
			f.closeSysctls()
			nft.CloseLasting()
			return nil, fmt.Errorf("hostfwd: enable: %w", err)
		}
		f.sysctls = append(f.sysctls, s)
		prior[key] = s.prev
	}
	f.table = addRuleset(nft, cfg, prior)
	if err := nft.Flush(); err != nil {
		f.closeSysctls()
		nft.CloseLasting()
		return nil, fmt.Errorf("hostfwd: enable: install nftables table inet %s: %w", cfg.TableName, err)
	}
	for _, s := range f.sysctls {
		if err := s.write("1"); err != nil {
			return nil, errors.Join(fmt.Errorf("hostfwd: enable: %w", err), f.Close())
		}
	}
	f.log.Info("forwarding enabled", "tun", cfg.TunName, "sources", cfg.SourcePrefixes,
		"outbound", cfg.OutboundInterfaces, "prior_sysctls", prior.comment()[len(stateCommentPrefix):])
	return f, nil
}

// Close deletes the nftables table and puts the forwarding sysctls back to the values Enable
// found. It is idempotent.
func (f *Forwarding) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	var errs []error
	f.nft.DelTable(f.table)
	if err := f.nft.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("hostfwd: close: delete table inet %s: %w", f.cfg.TableName, err))
	}
	for _, s := range f.sysctls {
		if err := s.write(s.prev); err != nil {
			errs = append(errs, fmt.Errorf("hostfwd: close: %w", err))
		}
	}
	f.closeSysctls()
	if err := f.nft.CloseLasting(); err != nil {
		errs = append(errs, fmt.Errorf("hostfwd: close: %w", err))
	}
	if len(errs) == 0 {
		f.log.Info("forwarding disabled; sysctls restored")
	}
	return errors.Join(errs...)
}

func (f *Forwarding) closeSysctls() {
	for _, s := range f.sysctls {
		s.f.Close()
	}
	f.sysctls = nil
}

// Cleanup removes the table a killed previous run left in the network namespace of the calling OS
// thread, after restoring the forwarding sysctls recorded in it; each step is logged at INFO. A
// namespace without the table is left alone. Enable calls it first.
func Cleanup(cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	nft, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return fmt.Errorf("hostfwd: cleanup: nftables: %w", err)
	}
	defer nft.CloseLasting()
	return cleanup(cfg, nft, cfg.Logger.With("nft_table", cfg.TableName))
}

func cleanup(cfg Config, nft *nftables.Conn, log *slog.Logger) error {
	tables, err := nft.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("hostfwd: cleanup: list nftables tables: %w", err)
	}
	var table *nftables.Table
	for _, t := range tables {
		if t.Name == cfg.TableName {
			table = t
		}
	}
	if table == nil {
		return nil
	}
	var errs []error
	prior, err := readState(nft, table)
	if err != nil {
		log.Warn("leftover nftables table has no readable sysctl record; leaving forwarding sysctls as they are", telemetry.Err(err))
	}
	for _, key := range sysctlKeys {
		v, ok := prior[key]
		if !ok {
			continue
		}
		s, err := openSysctl(key)
		if err != nil {
			errs = append(errs, fmt.Errorf("hostfwd: cleanup: %w", err))
			continue
		}
		if s.prev != v {
			if err := s.write(v); err != nil {
				errs = append(errs, fmt.Errorf("hostfwd: cleanup: %w", err))
			} else {
				log.Info("restored a forwarding sysctl left by a previous run", "sysctl", key, "value", v)
			}
		}
		s.f.Close()
	}
	nft.DelTable(table)
	if err := nft.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return errors.Join(append(errs, fmt.Errorf("hostfwd: cleanup: delete leftover table inet %s: %w", cfg.TableName, err))...)
	}
	log.Info("removed a leftover nftables table")
	return errors.Join(errs...)
}

// readState finds the state comment on the forward chain's rules.
func readState(nft *nftables.Conn, table *nftables.Table) (priorSysctls, error) {
	rules, err := nft.GetRules(table, &nftables.Chain{Name: chainForward, Table: table})
	if err != nil {
		return nil, fmt.Errorf("read chain %s: %w", chainForward, err)
	}
	for _, r := range rules {
		if c, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok && strings.HasPrefix(c, stateCommentPrefix) {
			return parseStateComment(c)
		}
	}
	return nil, errors.New("no state comment in the forward chain")
}

func openSysctl(key string) (*sysctl, error) {
	return openSysctlWith(key, os.OpenFile)
}

// openSysctlWith opens /proc/sys/key with open. Where /proc/sys is read-only (Docker without
// privileges, with the forwarding sysctls set by the container's sysctls option) a value already "1"
// is accepted read-only: forwarding is on and nothing needs writing.
func openSysctlWith(key string, open func(string, int, os.FileMode) (*os.File, error)) (*sysctl, error) {
	path := filepath.Join("/proc/sys", key)
	readOnly := false
	f, err := open(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EROFS) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
		readOnly = true
		f, err = open(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("open sysctl %s: %w", key, err)
	}
	buf := make([]byte, 32)
	n, err := f.ReadAt(buf, 0)
	if n == 0 && err != nil {
		f.Close()
		return nil, fmt.Errorf("read sysctl %s: %w", key, err)
	}
	v := strings.TrimSpace(string(buf[:n]))
	if !smallDecimal(v) {
		f.Close()
		return nil, fmt.Errorf("sysctl %s has unexpected value %q", key, v)
	}
	if readOnly && v != "1" {
		f.Close()
		return nil, fmt.Errorf("sysctl %s is %s and /proc/sys is read-only here: set it to 1 (e.g. the container's sysctls option)", key, v)
	}
	return &sysctl{key: key, f: f, prev: v, readOnly: readOnly}, nil
}

func (s *sysctl) write(v string) error {
	if s.readOnly {
		if v == s.prev {
			return nil
		}
		return fmt.Errorf("write sysctl %s=%s: /proc/sys is read-only", s.key, v)
	}
	if _, err := s.f.WriteAt([]byte(v+"\n"), 0); err != nil {
		return fmt.Errorf("write sysctl %s=%s: %w", s.key, v, err)
	}
	return nil
}

// addRuleset queues the table, equivalent to this nft script (TUN "tun-snowgate", default
// sources, no outbound interfaces configured):
//
//	table inet snowgate-gateway {
//		chain forward {
//			type filter hook forward priority filter; policy accept;
//			iifname "tun-snowgate" accept comment "snowgate prior sysctls: ..."
//			oifname "tun-snowgate" ct state established,related accept
//			oifname "tun-snowgate" counter drop
//		}
//		chain postrouting {
//			type nat hook postrouting priority srcnat; policy accept;
//			meta nfproto ipv4 ip saddr 100.64.0.0/11 oifname != "tun-snowgate" masquerade
//			meta nfproto ipv6 ip6 saddr fd00:2021:1111::/107 oifname != "tun-snowgate" masquerade
//		}
//	}
//
// With OutboundInterfaces, each masquerade rule becomes one per interface with
// `oifname "<name>"` instead of `oifname != "<tun>"`.
func addRuleset(nft *nftables.Conn, cfg Config, prior priorSysctls) *nftables.Table {
	accept := nftables.ChainPolicyAccept
	table := nft.AddTable(&nftables.Table{Name: cfg.TableName, Family: nftables.TableFamilyINet})
	fwd := nft.AddChain(&nftables.Chain{
		Name: chainForward, Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	post := nft.AddChain(&nftables.Chain{
		Name: chainPostrouting, Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept,
	})
	verdict := func(k expr.VerdictKind) expr.Any { return &expr.Verdict{Kind: k} }

	nft.AddRule(&nftables.Rule{
		Table: table, Chain: fwd,
		Exprs:    concat(matchIfname(expr.MetaKeyIIFNAME, expr.CmpOpEq, cfg.TunName), verdict(expr.VerdictAccept)),
		UserData: userdata.AppendString(nil, userdata.TypeComment, prior.comment()),
	})
	nft.AddRule(&nftables.Rule{
		Table: table, Chain: fwd,
		Exprs: concat(matchIfname(expr.MetaKeyOIFNAME, expr.CmpOpEq, cfg.TunName), matchCtState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept)),
	})
	nft.AddRule(&nftables.Rule{
		Table: table, Chain: fwd,
		Exprs: concat(matchIfname(expr.MetaKeyOIFNAME, expr.CmpOpEq, cfg.TunName), []expr.Any{&expr.Counter{}}, verdict(expr.VerdictDrop)),
	})
	for _, p := range cfg.SourcePrefixes {
		src := matchSource(p)
		if len(cfg.OutboundInterfaces) == 0 {
			nft.AddRule(&nftables.Rule{
				Table: table, Chain: post,
				Exprs: concat(src, matchIfname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, cfg.TunName), []expr.Any{&expr.Masq{}}),
			})
			continue
		}
		for _, out := range cfg.OutboundInterfaces {
			nft.AddRule(&nftables.Rule{
				Table: table, Chain: post,
				Exprs: concat(src, matchIfname(expr.MetaKeyOIFNAME, expr.CmpOpEq, out), []expr.Any{&expr.Masq{}}),
			})
		}
	}
	return table
}

func concat(parts ...any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		switch v := p.(type) {
		case []expr.Any:
			out = append(out, v...)
		case expr.Any:
			out = append(out, v)
		}
	}
	return out
}

// matchIfname is `iifname "name"` / `oifname != "name"`: the name NUL-padded to IFNAMSIZ, as nft
// compares it.
func matchIfname(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: b},
	}
}

// matchCtState is `ct state <bits>`.
func matchCtState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// matchSource is `meta nfproto ipv4 ip saddr P` (or the ip6 equivalent).
func matchSource(p netip.Prefix) []expr.Any {
	p = p.Masked()
	proto, offset := byte(unix.NFPROTO_IPV4), uint32(12)
	if p.Addr().Is6() {
		proto, offset = unix.NFPROTO_IPV6, 8
	}
	size := uint32(p.Addr().BitLen() / 8)
	out := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: size},
	}
	if p.Bits() < p.Addr().BitLen() {
		mask := make([]byte, size)
		for i := range p.Bits() {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: size, Mask: mask, Xor: make([]byte, size)})
	}
	return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Addr().AsSlice()})
}
