//go:build linux

package tundev

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// policyRules returns the three rules per address family that steer traffic into the device's
// tables (see the package documentation, "Routing"):
//
//	P    not fwmark MARK lookup TABLE                  resources (non-default routes)
//	P+1  lookup main suppress_prefixlength 0           local networks (main minus its default)
//	P+2  not fwmark MARK lookup TABLE+1                the Internet resource (default routes)
func policyRules(cfg Config) []*netlink.Rule {
	var out []*netlink.Rule
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		resources := netlink.NewRule()
		resources.Family = family
		resources.Priority = cfg.RulePriority
		resources.Table = cfg.Table
		resources.Mark = cfg.Fwmark
		resources.Invert = true

		local := netlink.NewRule()
		local.Family = family
		local.Priority = cfg.RulePriority + 1
		local.Table = unix.RT_TABLE_MAIN
		local.SuppressPrefixlen = 0

		internet := netlink.NewRule()
		internet.Family = family
		internet.Priority = cfg.RulePriority + 2
		internet.Table = internetTable(cfg)
		internet.Mark = cfg.Fwmark
		internet.Invert = true

		out = append(out, resources, local, internet)
	}
	return out
}

// internetTable is the table of the default routes (the Internet resource): Config.Table+1.
//
// A single table with `suppress_prefixlength 0` on the first rule would do, but
// vishvananda/netlink v1.3.1 drops FRA_SUPPRESS_PREFIXLEN for tables numbered 256 and above (it
// only sends it when the table fits the 8-bit header field), so default routes get a table of
// their own, as in Firezone (its "internet" table).
func internetTable(cfg Config) int { return cfg.Table + 1 }

// isOurRule reports whether a rule listed from the kernel is one of policyRules(cfg) (by
// priority and table), so Cleanup can remove leftovers without a state file.
func isOurRule(cfg Config, r *netlink.Rule) bool {
	switch r.Priority {
	case cfg.RulePriority:
		return r.Table == cfg.Table
	case cfg.RulePriority + 2:
		return r.Table == internetTable(cfg)
	case cfg.RulePriority + 1:
		return r.Table == unix.RT_TABLE_MAIN && r.SuppressPrefixlen == 0
	}
	return false
}

// describeRule formats a rule the way `ip rule` shows it, for errors and logs.
func describeRule(r *netlink.Rule) string {
	fam := "-4"
	if r.Family == unix.AF_INET6 {
		fam = "-6"
	}
	s := fmt.Sprintf("%s %d:", fam, r.Priority)
	if r.Invert {
		s += " not"
	}
	if r.Mark != 0 {
		s += fmt.Sprintf(" fwmark %#x", r.Mark)
	}
	if r.Table == unix.RT_TABLE_MAIN {
		s += " lookup main"
	} else {
		s += fmt.Sprintf(" lookup %d", r.Table)
	}
	if r.SuppressPrefixlen >= 0 {
		s += fmt.Sprintf(" suppress_prefixlength %d", r.SuppressPrefixlen)
	}
	return s
}
