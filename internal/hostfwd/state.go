package hostfwd

import (
	"fmt"
	"slices"
	"strings"
)

// The sysctls Enable turns on, as paths under /proc/sys.
const (
	sysctlIPv4Forward = "net/ipv4/ip_forward"
	sysctlIPv6Forward = "net/ipv6/conf/all/forwarding"
)

var sysctlKeys = []string{sysctlIPv4Forward, sysctlIPv6Forward}

// stateCommentPrefix starts the comment of the forward chain's first rule, which records the
// sysctl values Enable found: after a SIGKILL, Cleanup reads them back from the kernel's copy of
// the ruleset and restores them, so no state file is needed (and `nft list ruleset` shows them).
const stateCommentPrefix = "snowgate prior sysctls:"

// priorSysctls maps a sysctl key (one of sysctlKeys) to the value found before Enable.
type priorSysctls map[string]string

// comment encodes p for the rule comment, keys in a fixed order.
func (p priorSysctls) comment() string {
	var b strings.Builder
	b.WriteString(stateCommentPrefix)
	for _, k := range sysctlKeys {
		if v, ok := p[k]; ok {
			fmt.Fprintf(&b, " %s=%s", k, v)
		}
	}
	return b.String()
}

// parseStateComment decodes a comment written by comment. Only known keys with small decimal
// values are accepted: the comment lives in the kernel, where anyone with CAP_NET_ADMIN could
// have changed it, and its values are written to /proc/sys.
func parseStateComment(s string) (priorSysctls, error) {
	rest, ok := strings.CutPrefix(s, stateCommentPrefix)
	if !ok {
		return nil, fmt.Errorf("hostfwd: rule comment %q is not snowgate's state", s)
	}
	out := priorSysctls{}
	for field := range strings.FieldsSeq(rest) {
		k, v, ok := strings.Cut(field, "=")
		if !ok || !slices.Contains(sysctlKeys, k) || !smallDecimal(v) {
			return nil, fmt.Errorf("hostfwd: bad field %q in state comment", field)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("hostfwd: %s twice in state comment", k)
		}
		out[k] = v
	}
	return out, nil
}

func smallDecimal(v string) bool {
	if v == "" || len(v) > 3 {
		return false
	}
	for _, r := range v {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
