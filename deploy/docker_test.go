package deploy

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// dockerStage is one FROM … AS name stage of the Dockerfile, with the lines that follow it.
type dockerStage struct {
	name, base string
	lines      []string
}

// parseDockerfile splits the Dockerfile into stages, joining '\' continuations.
func parseDockerfile(t *testing.T) []dockerStage {
	t.Helper()
	var stages []dockerStage
	var pending string
	sc := bufio.NewScanner(strings.NewReader(readFile(t, "deploy", "docker", "Dockerfile")))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			pending += strings.TrimSuffix(line, "\\") + " "
			continue
		}
		line, pending = pending+line, ""
		f := strings.Fields(line)
		if strings.EqualFold(f[0], "FROM") {
			st := dockerStage{}
			for i := 1; i < len(f); i++ {
				switch {
				case strings.HasPrefix(f[i], "--"):
				case strings.EqualFold(f[i], "AS") && i+1 < len(f):
					st.name = f[i+1]
					i++
				default:
					st.base = f[i]
				}
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) > 0 {
			stages[len(stages)-1].lines = append(stages[len(stages)-1].lines, line)
		}
	}
	return stages
}

// instr returns the arguments of every instruction kw ("COPY", "ENV", …) of the stage.
func (s dockerStage) instr(kw string) []string {
	var out []string
	for _, l := range s.lines {
		if f := strings.Fields(l); len(f) > 0 && strings.EqualFold(f[0], kw) {
			out = append(out, strings.TrimSpace(l[len(f[0]):]))
		}
	}
	return out
}

// execForm parses the JSON array of an exec-form ENTRYPOINT, CMD or HEALTHCHECK CMD; nil if it is not one.
func execForm(args string) []string {
	var v []string
	if json.Unmarshal([]byte(args), &v) != nil {
		return nil
	}
	return v
}

// dockerCopy is one COPY instruction: from is the stage (empty: the build context).
type dockerCopy struct {
	from, src, dest string
}

func (s dockerStage) copies() []dockerCopy {
	var out []dockerCopy
	for _, args := range s.instr("COPY") {
		var c dockerCopy
		var rest []string
		for _, f := range strings.Fields(args) {
			switch {
			case strings.HasPrefix(f, "--from="):
				c.from = strings.TrimPrefix(f, "--from=")
			case strings.HasPrefix(f, "--"):
			default:
				rest = append(rest, f)
			}
		}
		if len(rest) == 2 {
			c.src, c.dest = rest[0], rest[1]
		}
		out = append(out, c)
	}
	return out
}

// program is something a container runs that may read environment variables: a snowgate binary (judged by
// the string literals of its Go sources) or a shell script of deploy/docker (judged by its $NAME references).
type program struct {
	name  string // "snowgate-client", or the script's path in the repository
	reads func(name string) bool
}

// scriptReads reports whether shell script text references $name or ${name…}.
func scriptReads(text, name string) bool {
	return regexp.MustCompile(`\$\{?` + regexp.QuoteMeta(name) + `(?:[^A-Za-z0-9_]|$)`).MatchString(text)
}

// imagePrograms maps the paths of an image's programs to what they are: binaries copied from a build stage
// and scripts copied from deploy/docker.
func imagePrograms(t *testing.T, ix *sourceIndex, s dockerStage) map[string]program {
	t.Helper()
	progs := map[string]program{}
	for _, c := range s.copies() {
		switch {
		case strings.HasPrefix(c.from, "build-"):
			bin := path.Base(c.dest)
			lits := ix.literals(bin)
			progs[c.dest] = program{name: bin, reads: func(n string) bool { return lits[n] }}
		case c.from == "" && strings.HasPrefix(c.src, "deploy/docker/") && strings.HasSuffix(c.src, ".sh"):
			text := readFile(t, c.src)
			progs[c.dest] = program{name: c.src, reads: func(n string) bool { return scriptReads(text, n) }}
		}
	}
	return progs
}

// entrypoint returns the exec form of the stage's last ENTRYPOINT (nil if none).
func (s dockerStage) entrypoint() []string {
	eps := s.instr("ENTRYPOINT")
	if len(eps) == 0 {
		return nil
	}
	return execForm(eps[len(eps)-1])
}

// imageSpec is what go test expects of each runtime target of the Dockerfile.
type imageSpec struct {
	base     string
	bin      string   // the snowgate binary the image runs; "" for the lab's helper images
	root     bool     // must say USER root (kernel TUN needs CAP_NET_ADMIN); otherwise distroless nonroot
	packages []string // Debian packages the image must install
	script   string   // deploy/docker script the ENTRYPOINT runs
}

const (
	distroless = "gcr.io/distroless/static-debian12:nonroot"
	debianSlim = "debian:bookworm-slim"
)

// images lists every runtime target. A new target must be added here, so that someone decides what it needs.
var images = map[string]imageSpec{
	"relay":  {base: distroless, bin: "snowgate-relay"},
	"portal": {base: distroless, bin: "snowgate-portal"},
	"client": {base: debianSlim, bin: "snowgate-client", root: true,
		packages: []string{"ca-certificates", "iproute2", "nftables"}},
	"gateway": {base: debianSlim, bin: "snowgate-gateway", root: true,
		packages: []string{"ca-certificates", "iproute2", "nftables"}},
	"router":   {base: debianSlim, packages: []string{"iproute2", "nftables"}, script: "deploy/docker/router.sh"},
	"resource": {base: debianSlim, packages: []string{"python3", "dnsmasq-base"}},
}

// hasHealthcheckCommand reports whether the binary has a `healthcheck` subcommand (a "healthcheck" literal in
// its main package).
func hasHealthcheckCommand(t *testing.T, bin string) bool {
	t.Helper()
	dir, _ := binaryDir(bin)
	return dirLiterals(t, dir)["healthcheck"]
}

// TestDockerfile checks the stages: every binary built exists, every COPY --from names a stage, each runtime
// target is what images says (base, user, packages, entrypoint, health check), and the environment it bakes
// in is read by what it runs.
func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t)
	byName := map[string]dockerStage{}
	for _, s := range stages {
		byName[s.name] = s
	}
	cmdRef := regexp.MustCompile(`\./cmd/([\w-]+)`)
	for _, s := range stages {
		for _, l := range s.lines {
			for _, m := range cmdRef.FindAllStringSubmatch(l, -1) {
				if _, ok := binaryDir(m[1]); !ok {
					t.Errorf("stage %s builds ./cmd/%s, which does not exist", s.name, m[1])
				}
			}
			if m := regexp.MustCompile(`--from=(\S+)`).FindStringSubmatch(l); m != nil {
				if _, ok := byName[m[1]]; !ok {
					t.Errorf("stage %s copies from unknown stage %s", s.name, m[1])
				}
			}
			if strings.HasPrefix(l, "RUN") && strings.Contains(l, "go build") {
				for _, want := range []string{"-trimpath", `-ldflags "-s -w"`, "type=cache,target=/go/pkg/mod", "type=cache,target=/root/.cache/go-build"} {
					if !strings.Contains(l, want) {
						t.Errorf("stage %s: go build lacks %s", s.name, want)
					}
				}
			}
		}
	}
	if !strings.Contains(readFile(t, "deploy", "docker", "Dockerfile"), "CGO_ENABLED=0") {
		t.Error("the builder does not set CGO_ENABLED=0")
	}

	// Every runtime stage is in images, and every target compose builds is a runtime stage.
	for _, s := range stages {
		if s.name == "builder" || strings.HasPrefix(s.name, "build-") {
			continue
		}
		if _, ok := images[s.name]; !ok {
			t.Errorf("Dockerfile target %s is not in the test's images table: say what it must be", s.name)
		}
	}
	c := parseCompose(t, readFile(t, "docker-compose.yml"))
	for _, name := range sortedKeys(c.Services) {
		if b := c.Services[name].Build; b != nil {
			if _, ok := images[b.Target]; !ok {
				t.Errorf("compose service %s builds target %s, which is not in the images table", name, b.Target)
			}
		}
	}

	ix := newSourceIndex(t)
	for _, target := range sortedKeys(images) {
		spec := images[target]
		t.Run(target, func(t *testing.T) {
			s, ok := byName[target]
			if !ok {
				t.Fatalf("Dockerfile has no target %s", target)
			}
			checkImage(t, ix, byName, s, spec)
		})
	}
}

func checkImage(t *testing.T, ix *sourceIndex, byName map[string]dockerStage, s dockerStage, spec imageSpec) {
	t.Helper()
	if s.base != spec.base {
		t.Errorf("based on %s; want %s", s.base, spec.base)
	}
	var user string
	for _, u := range s.instr("USER") {
		user = u
	}
	switch {
	case spec.base == distroless && (user == "" || strings.HasPrefix(user, "root") || strings.HasPrefix(user, "0")):
		t.Errorf("runs as %q; want a non-root USER", user)
	case spec.root && user != "root":
		t.Errorf("USER %q; want an explicit USER root (kernel TUN mode needs CAP_NET_ADMIN)", user)
	}

	// Packages: installed without recommends, lists removed in the same layer.
	if len(spec.packages) > 0 {
		var install string
		for _, r := range s.instr("RUN") {
			if strings.Contains(r, "apt-get install") {
				install = r
			}
		}
		fields := strings.Fields(install)
		for _, p := range spec.packages {
			if !slices.Contains(fields, p) {
				t.Errorf("does not apt-get install %s (RUN %q)", p, install)
			}
		}
		for _, want := range []string{"--no-install-recommends", "rm -rf /var/lib/apt/lists/*"} {
			if install != "" && !strings.Contains(install, want) {
				t.Errorf("apt-get install without %s", want)
			}
		}
	}

	progs := imagePrograms(t, ix, s)
	entry := s.entrypoint()
	if spec.bin != "" {
		binPath := "/usr/local/bin/" + spec.bin
		short := strings.TrimPrefix(spec.bin, "snowgate-")
		found := false
		for _, c := range s.copies() {
			found = found || (c.from == "build-"+short && c.src == "/out/"+spec.bin && c.dest == binPath)
		}
		if !found {
			t.Errorf("does not COPY --from=build-%s /out/%s %s", short, spec.bin, binPath)
		}
		b, ok := byName["build-"+short]
		if !ok || !slices.ContainsFunc(b.instr("RUN"), func(r string) bool {
			return strings.Contains(r, "-o /out/"+spec.bin+" ./cmd/"+spec.bin)
		}) {
			t.Errorf("no build-%s stage runs go build -o /out/%s ./cmd/%s", short, spec.bin, spec.bin)
		}
		if len(entry) == 0 || entry[0] != binPath {
			t.Errorf("ENTRYPOINT %q does not run %s", entry, binPath)
		}

		// HEALTHCHECK: the binary's own subcommand exactly when it has one.
		hcs := s.instr("HEALTHCHECK")
		want := hasHealthcheckCommand(t, spec.bin)
		switch {
		case want && len(hcs) == 0:
			t.Errorf("%s has a healthcheck subcommand but the image has no HEALTHCHECK", spec.bin)
		case want:
			_, cmd, _ := strings.Cut(hcs[len(hcs)-1], "CMD ")
			if got := execForm(cmd); !slices.Equal(got, []string{binPath, "healthcheck"}) {
				t.Errorf("HEALTHCHECK CMD %q; want [%s healthcheck]", got, binPath)
			}
		case len(hcs) > 0:
			t.Errorf("HEALTHCHECK %q, but %s has no healthcheck subcommand", hcs, spec.bin)
		}
	}
	if spec.script != "" {
		p, ok := progs[firstOr(entry)]
		if !ok || p.name != spec.script {
			t.Errorf("ENTRYPOINT %q does not run %s", entry, spec.script)
		}
	}

	// Environment baked into the image must be read by its entrypoint program.
	var names []string
	for _, e := range s.instr("ENV") {
		for _, kv := range strings.Fields(e) {
			if k, _, ok := strings.Cut(kv, "="); ok {
				names = append(names, k)
			}
		}
	}
	if len(names) > 0 {
		p, ok := progs[firstOr(entry)]
		if !ok {
			t.Fatalf("sets ENV %v but its ENTRYPOINT %q is no program of ours", names, entry)
		}
		for _, n := range names {
			if !p.reads(n) {
				t.Errorf("ENV %s is not read by %s", n, p.name)
			}
		}
	}
}

func firstOr(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// dockerignored reports whether p (a slash path relative to the context) is left out by the ignore patterns,
// with Docker's rules: the last matching pattern wins, "!" re-includes, a pattern matching a directory covers
// everything below it, "**" spans directories.
func dockerignored(patterns []string, p string) bool {
	ignored := false
	for _, pat := range patterns {
		neg := strings.HasPrefix(pat, "!")
		pat = strings.TrimPrefix(pat, "!")
		re := "^"
		for i := 0; i < len(pat); i++ {
			switch {
			case strings.HasPrefix(pat[i:], "**/"):
				re += "(?:.*/)?"
				i += 2
			case strings.HasPrefix(pat[i:], "**"):
				re += ".*"
				i++
			case pat[i] == '*':
				re += "[^/]*"
			case pat[i] == '?':
				re += "[^/]"
			default:
				re += regexp.QuoteMeta(pat[i : i+1])
			}
		}
		if regexp.MustCompile(re + "(?:/.*)?$").MatchString(p) {
			ignored = !neg
		}
	}
	return ignored
}

func dockerignorePatterns(t *testing.T) []string {
	t.Helper()
	var pats []string
	sc := bufio.NewScanner(strings.NewReader(readFile(t, "deploy", "docker", "Dockerfile.dockerignore")))
	for sc.Scan() {
		p := strings.TrimSpace(sc.Text())
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		neg, p := strings.HasPrefix(p, "!"), strings.TrimPrefix(p, "!")
		p = strings.TrimPrefix(path.Clean("/"+p), "/") // Docker cleans patterns the same way
		if neg {
			p = "!" + p
		}
		pats = append(pats, p)
	}
	return pats
}

func TestDockerignored(t *testing.T) {
	pats := []string{".git", "**/node_modules", "**/*.test", "deploy", "!deploy/docker/x.sh"}
	for p, want := range map[string]bool{
		".git/config": true, "a/b/node_modules/x": true, "node_modules": true, "relay/relay.test": true,
		"deploy/README.md": true, "deploy/docker/x.sh": false, "deploy/docker/y.sh": true, "relay/relay.go": false,
		"go.mod": false,
	} {
		if got := dockerignored(pats, p); got != want {
			t.Errorf("dockerignored(%q) = %v, want %v", p, got, want)
		}
	}
}

// TestDockerignore checks that the build-context filter leaves out no directory holding Go code a binary
// could import, and keeps every file the Dockerfile copies from the context.
func TestDockerignore(t *testing.T) {
	pats := dockerignorePatterns(t)
	for _, p := range pats {
		if strings.HasPrefix(p, "!") || strings.ContainsAny(p, "*?[") {
			continue
		}
		if p == "go.mod" || p == "go.sum" {
			t.Errorf("Dockerfile.dockerignore drops %s", p)
		}
		_ = filepath.WalkDir(repoPath(p), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			rel, _ := filepath.Rel(root, path)
			if dockerignored(pats, filepath.ToSlash(rel)) {
				t.Errorf("Dockerfile.dockerignore drops %s, which holds Go code (%s)", p, path)
			}
			return nil
		})
	}
	for _, s := range parseDockerfile(t) {
		for _, c := range s.copies() {
			if c.from != "" {
				continue
			}
			if _, err := os.Stat(repoPath(c.src)); err != nil {
				t.Errorf("stage %s copies %s from the context: %v", s.name, c.src, err)
			}
			if dockerignored(pats, c.src) {
				t.Errorf("stage %s copies %s, which Dockerfile.dockerignore leaves out of the context", s.name, c.src)
			}
		}
	}
}

// TestDockerBinariesStatic checks that every binary the Dockerfile builds resolves without cgo
// (CGO_ENABLED=0, as in the builder) for the platforms images are usually built for: a dependency that
// needs cgo would break only the image build otherwise. It runs `go list`, not a full build (a cold
// CGO_ENABLED=0 build of one binary takes minutes here).
func TestDockerBinariesStatic(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go not in PATH: %v", err)
	}
	build := regexp.MustCompile(`go build .* -o /out/(\S+) (\./cmd/\S+)`)
	for _, s := range parseDockerfile(t) {
		for _, r := range s.instr("RUN") {
			m := build.FindStringSubmatch(r)
			if m == nil {
				continue
			}
			for _, arch := range []string{"amd64", "arm64"} {
				cmd := exec.CommandContext(t.Context(), goTool, "list", "-deps", "-e",
					"-f", "{{if .Error}}{{.ImportPath}}: {{.Error}}{{end}}{{range .DepsErrors}}{{.}}{{end}}", m[2])
				cmd.Dir = root
				cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
				out, err := cmd.CombinedOutput()
				if err != nil || strings.TrimSpace(string(out)) != "" {
					t.Errorf("stage %s: CGO_ENABLED=0 GOARCH=%s go list %s: %v\n%s", s.name, arch, m[2], err, out)
				}
			}
		}
	}
}
