package tunnelsim

import (
	"flag"
	"os"
	"testing"
)

// TestMain makes 200 scenarios the default (the CI target; rapid's own default is 100); rapid runs a fifth
// of them with -short. -rapid.checks given on the command line wins.
func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "rapid.checks" })
	if !set {
		if err := flag.Set("rapid.checks", "200"); err != nil {
			panic(err)
		}
	}
	os.Exit(m.Run())
}
