//go:build linux

package tundev

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Cleanup removes what a previous run with the same Config left behind after it was killed (SIGKILL,
// power loss), in the network namespace of the calling OS thread: a persistent TUN of that name, the
// policy rules at cfg's priorities, every route of cfg's two tables, and (if a backup exists at the
// configured path) the original resolv.conf. Each removal is logged at INFO; a clean system logs
// nothing. Create calls it first.
//
// A non-persistent TUN with that name is attached to a live process (the kernel destroys it with
// its last descriptor), most likely a running instance: Cleanup then returns ErrDeviceBusy and
// changes nothing. An interface of that name that is not a TUN gives ErrNameInUse.
//
// The IPv4 and IPv6 fields of cfg are not needed.
func Cleanup(cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("tundev: cleanup: netlink: %w", err)
	}
	defer h.Close()
	return cleanup(cfg, h)
}

func cleanup(cfg Config, h *netlink.Handle) error {
	log := cfg.Logger.With("tun", cfg.Name)
	link, err := h.LinkByName(cfg.Name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
	case err != nil:
		return fmt.Errorf("tundev: cleanup: look up %s: %w", cfg.Name, err)
	default:
		tt, ok := link.(*netlink.Tuntap)
		if !ok {
			return fmt.Errorf("tundev: cleanup: %s is a %s: %w", cfg.Name, link.Type(), ErrNameInUse)
		}
		if tt.NonPersist {
			return fmt.Errorf("tundev: cleanup: %s: %w", cfg.Name, ErrDeviceBusy)
		}
		if err := h.LinkDel(link); err != nil && !isNotFound(err) {
			return fmt.Errorf("tundev: cleanup: delete leftover %s: %w", cfg.Name, err)
		}
		log.Info("removed a leftover persistent TUN device")
	}

	var errs []error
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := h.RuleList(family)
		if errors.Is(err, unix.EAFNOSUPPORT) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("tundev: cleanup: list rules: %w", err))
			continue
		}
		for i := range rules {
			r := &rules[i]
			if !isOurRule(cfg, r) {
				continue
			}
			del := netlink.NewRule()
			del.Family, del.Priority, del.Table = family, r.Priority, r.Table
			if err := h.RuleDel(del); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("tundev: cleanup: delete rule %s: %w", describeRule(r), err))
				continue
			}
			log.Info("removed a leftover policy rule", "rule", describeRule(r))
		}
	}

	routes, err := ourRoutes(h, cfg)
	if err != nil {
		errs = append(errs, fmt.Errorf("tundev: cleanup: %w", err))
	}
	removed := 0
	for i := range routes {
		if err := h.RouteDel(&routes[i]); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("tundev: cleanup: delete route: %w", err))
			continue
		}
		removed++
	}
	if removed > 0 {
		log.Info("removed leftover routes", "tables", []int{cfg.Table, internetTable(cfg)}, "count", removed)
	}

	if _, err := restoreDNS(cfg.DNS, log); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
