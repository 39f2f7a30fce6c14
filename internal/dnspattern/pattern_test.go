package dnspattern

import (
	"errors"
	"strings"
	"testing"
)

// TestPatternSemantics documents the exact matching rules (see Pattern).
func TestPatternSemantics(t *testing.T) {
	cases := []struct {
		pattern string
		name    string
		want    bool
	}{
		{"example.com", "example.com", true},
		{"example.com", "EXAMPLE.com.", true},
		{"example.com", "a.example.com", false},
		{"*.example.com", "a.example.com", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", "a.b.example.com", false},
		{"*.example.com", "aexample.com", false},
		{"**.example.com", "example.com", true},
		{"**.example.com", "a.example.com", true},
		{"**.example.com", "a.b.c.example.com", true},
		{"**.example.com", "badexample.com", false},
		{"**.example.com", "example.org", false},
		{"?.example.com", "a.example.com", true},
		{"?.example.com", "ab.example.com", false},
		{"?.example.com", "example.com", false},
		{"?.example.com", "a.b.example.com", false},
		{"app-*.example.com", "app-1.example.com", true},
		{"app-*.example.com", "app-.example.com", true},
		{"app-*.example.com", "app.example.com", false},
		{"us-east?.example.com", "us-east1.example.com", true},
		{"us-east?.example.com", "us-east12.example.com", false},
		{"a.**.example.com", "a.example.com", true},
		{"a.**.example.com", "a.x.y.example.com", true},
		{"a.**.example.com", "b.x.example.com", false},
		{"*.*.example.com", "a.b.example.com", true},
		{"*.*.example.com", "a.example.com", false},
		{"*a*b.x", "zazzb.x", true},
		{"*a*b.x", "zazzbc.x", false},
	}
	for _, c := range cases {
		p, err := Parse(c.pattern)
		if err != nil {
			t.Fatalf("Parse(%q): %v", c.pattern, err)
		}
		if got := p.Match(c.name); got != c.want {
			t.Errorf("%q.Match(%q) = %v, want %v", c.pattern, c.name, got, c.want)
		}
	}
}

func TestPatternInvalid(t *testing.T) {
	for _, s := range []string{"", ".", "a..b", "a**.b", "**a.b", "ex ample.com", "a/b.com", string(make([]byte, 300))} {
		if _, err := Parse(s); !errors.Is(err, ErrInvalidPattern) {
			t.Errorf("Parse(%q) error = %v, want ErrInvalidPattern", s, err)
		}
	}
}

// TestMostSpecificWins: for each name, the listed pattern must win among all patterns that match it.
func TestMostSpecificWins(t *testing.T) {
	all := []string{"**.example.com", "*.example.com", "?.example.com", "a.example.com",
		"*.b.example.com", "**.b.example.com", "c*.b.example.com", "**.com"}
	cases := []struct{ name, want string }{
		{"a.example.com", "a.example.com"},
		{"z.example.com", "?.example.com"},
		{"zz.example.com", "*.example.com"},
		{"example.com", "**.example.com"},
		{"x.y.example.com", "**.example.com"},
		{"x.b.example.com", "*.b.example.com"},
		{"cat.b.example.com", "c*.b.example.com"},
		{"b.example.com", "**.b.example.com"}, // its apex label "b" is literal
		{"y.x.b.example.com", "**.b.example.com"},
		{"other.com", "**.com"},
	}
	for _, c := range cases {
		var best *Pattern
		for _, s := range all {
			p, err := Parse(s)
			if err != nil {
				t.Fatal(err)
			}
			if p.Match(c.name) && (best == nil || p.MoreSpecificThan(*best)) {
				best = &p
			}
		}
		if best == nil || best.String() != c.want {
			t.Errorf("most specific for %q = %v, want %s", c.name, best, c.want)
		}
	}
}

// TestPatternManyDoubleStars: "**"-heavy patterns match in polynomial time.
func TestPatternManyDoubleStars(t *testing.T) {
	p, err := Parse(strings.Repeat("**.a.", 40) + "b")
	if err != nil {
		t.Fatal(err)
	}
	name := strings.Repeat("a.", 120) + "c"
	if p.Match(name) {
		t.Error("matched")
	}
	if !p.Match(strings.Repeat("a.", 60) + "b") {
		t.Error("did not match")
	}
}
