// Package dnspattern parses and matches DNS resource addresses: exact names and the label-aware globs
// "*.x", "**.x", "?.x" (and "*"/"?" inside a label), with a most-specific-wins order. The portal validates
// resource addresses with it and the client's stub resolver matches queries with it, so both agree.
package dnspattern

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidPattern is wrapped by every error SetResources returns for a resource address it cannot parse.
var ErrInvalidPattern = errors.New("invalid DNS resource pattern")

// Pattern is a parsed DNS resource address: an exact name or a label-aware glob.
//
// Semantics (Firezone's, where a domain is matched label by label like a path; case-insensitive):
//
//	label "**"    zero or more whole labels          **.example.com  → example.com, a.example.com, a.b.example.com
//	label "*"     exactly one label, any content     *.example.com   → a.example.com (not example.com, not a.b.example.com)
//	"*" in label  any run of characters in one label app-*.example.com → app-1.example.com, app-.example.com
//	"?" in label  exactly one character              ?.example.com   → a.example.com (not ab.example.com, not example.com)
//	anything else that literal label                 example.com     → example.com only
//
// When several patterns match a name the most specific wins (see Pattern.MoreSpecificThan).
type Pattern struct {
	raw    string
	labels []string // lower-case, left to right
	exact  bool
}

// Parse parses a resource address such as "app.example.com", "*.example.com", "**.example.com" or
// "?.example.com". A trailing dot is ignored; matching is case-insensitive.
func Parse(s string) (Pattern, error) {
	name := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".")
	if name == "" {
		return Pattern{}, fmt.Errorf("%w: %q is empty", ErrInvalidPattern, s)
	}
	if len(name) > 253 {
		return Pattern{}, fmt.Errorf("%w: %q is longer than 253 characters", ErrInvalidPattern, s)
	}
	labels := strings.Split(name, ".")
	exact := true
	for _, l := range labels {
		if l == "" {
			return Pattern{}, fmt.Errorf("%w: %q has an empty label", ErrInvalidPattern, s)
		}
		if len(l) > 63 {
			return Pattern{}, fmt.Errorf("%w: %q has a label longer than 63 characters", ErrInvalidPattern, s)
		}
		if strings.Contains(l, "**") && l != "**" {
			return Pattern{}, fmt.Errorf("%w: %q: \"**\" must be a whole label", ErrInvalidPattern, s)
		}
		if i := strings.IndexFunc(l, badPatternRune); i >= 0 {
			return Pattern{}, fmt.Errorf("%w: %q has the character %q, not allowed in a host name", ErrInvalidPattern, s, l[i])
		}
		if strings.ContainsAny(l, "*?") {
			exact = false
		}
	}
	return Pattern{raw: name, labels: labels, exact: exact}, nil
}

// String returns the normalised pattern (lower case, no trailing dot).
func (p Pattern) String() string { return p.raw }

// Exact reports whether the pattern contains no wildcard.
func (p Pattern) Exact() bool { return p.exact }

// Match reports whether the domain name (any case, trailing dot optional) matches the pattern.
func (p Pattern) Match(name string) bool {
	name = strings.TrimSuffix(name, ".")
	if p.exact {
		return strings.EqualFold(name, p.raw)
	}
	var labels []string
	if name != "" {
		labels = strings.Split(strings.ToLower(name), ".")
	}
	return matchLabels(p.labels, labels)
}

// matchLabels matches pattern labels against name labels; "**" consumes zero or more labels. It is the
// classic wildcard algorithm (backtrack only to the last "**"), so it runs in O(len(pat)·len(name)) even
// for patterns full of "**".
func matchLabels(pat, name []string) bool {
	px, nx := 0, 0
	starPx, starNx := -1, 0
	for nx < len(name) || px < len(pat) {
		if px < len(pat) {
			if pat[px] == "**" {
				starPx, starNx = px, nx
				px++
				continue
			}
			if nx < len(name) && matchLabel(pat[px], name[nx]) {
				px++
				nx++
				continue
			}
		}
		if starPx >= 0 && starNx < len(name) {
			starNx++
			px, nx = starPx+1, starNx
			continue
		}
		return false
	}
	return true
}

// matchLabel matches one label with "*" (any run) and "?" (one character); both stay inside the label.
func matchLabel(pat, s string) bool {
	px, sx := 0, 0
	nextPx, nextSx := 0, 0
	for px < len(pat) || sx < len(s) {
		if px < len(pat) {
			switch c := pat[px]; c {
			case '*':
				nextPx, nextSx = px, sx+1
				px++
				continue
			case '?':
				if sx < len(s) {
					px++
					sx++
					continue
				}
			default:
				if sx < len(s) && s[sx] == c {
					px++
					sx++
					continue
				}
			}
		}
		if 0 < nextSx && nextSx <= len(s) {
			px, sx = nextPx, nextSx
			continue
		}
		return false
	}
	return true
}

// labelRank orders label kinds by specificity: literal > partial glob > "?"-only > "*" > "**" > absent.
func labelRank(l string) int {
	switch {
	case l == "**":
		return 1
	case l == "*":
		return 2
	case strings.Trim(l, "?") == "":
		return 3
	case strings.ContainsAny(l, "*?"):
		return 4
	default:
		return 5
	}
}

// MoreSpecificThan reports whether p should win over q when both match the same name. Labels are compared
// from the right (the TLD first); the first position where their kinds differ decides, a missing label
// ranking lowest. Exact names beat every wildcard. Ties break on the pattern text for determinism.
func (p Pattern) MoreSpecificThan(q Pattern) bool {
	if p.exact != q.exact {
		return p.exact
	}
	for i := 1; i <= max(len(p.labels), len(q.labels)); i++ {
		rp, rq := 0, 0
		if i <= len(p.labels) {
			rp = labelRank(p.labels[len(p.labels)-i])
		}
		if i <= len(q.labels) {
			rq = labelRank(q.labels[len(q.labels)-i])
		}
		if rp != rq {
			return rp > rq
		}
	}
	return p.raw < q.raw
}

// badPatternRune reports characters a resource address may not hold: host names are letters, digits, '-'
// and '_' (service labels), plus the glob characters '*' and '?'.
func badPatternRune(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '*' || r == '?')
}
