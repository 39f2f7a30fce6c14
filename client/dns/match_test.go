package dns

import "testing"

// TestMostSpecificWins: through the resolver, for each name, the listed pattern must win among all patterns that match it.
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
	r := newTestResolver(t)
	var res []Resource
	for _, p := range all {
		res = append(res, Resource{ID: p, Address: p})
	}
	if err := r.SetResources(res, nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		e := r.match(c.name)
		if e == nil || e.id != c.want {
			got := "<none>"
			if e != nil {
				got = e.id
			}
			t.Errorf("match(%q) = %s, want %s", c.name, got, c.want)
		}
	}
}
