package deploy

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
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

// TestDockerfile checks the stages: every binary built exists, every COPY --from names a stage, the runtime
// targets compose uses exist, and they run distroless as non-root.
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

	// Targets used by docker-compose.yml (current services only).
	c := parseCompose(t, readFile(t, "docker-compose.yml"))
	targets := map[string]bool{"relay": true, "portal": true}
	for _, s := range c.Services {
		if s.Build != nil {
			targets[s.Build.Target] = true
		}
	}
	for target := range targets {
		s, ok := byName[target]
		if !ok {
			t.Errorf("Dockerfile has no target %s", target)
			continue
		}
		if s.base != "gcr.io/distroless/static-debian12:nonroot" {
			t.Errorf("target %s is based on %s; want gcr.io/distroless/static-debian12:nonroot", target, s.base)
		}
		var user, entry string
		for _, l := range s.lines {
			if strings.HasPrefix(l, "USER ") {
				user = strings.TrimPrefix(l, "USER ")
			}
			if strings.HasPrefix(l, "ENTRYPOINT ") {
				entry = l
			}
		}
		if user == "" || strings.HasPrefix(user, "root") || strings.HasPrefix(user, "0") {
			t.Errorf("target %s runs as %q; want a non-root USER", target, user)
		}
		if !strings.Contains(entry, "snowgate-"+target) {
			t.Errorf("target %s: ENTRYPOINT %q does not run snowgate-%s", target, entry, target)
		}
		// Environment baked into the image must be read by the binary too.
		var names []string
		for _, l := range s.lines {
			if strings.HasPrefix(l, "ENV ") {
				for _, kv := range strings.Fields(strings.TrimPrefix(l, "ENV ")) {
					if k, _, ok := strings.Cut(kv, "="); ok {
						names = append(names, k)
					}
				}
			}
		}
		checkEnvNames(t, "Dockerfile target "+target, "snowgate-"+target, names)
	}
}

// TestDockerignore checks that the build-context filter leaves out no directory holding Go code a binary
// could import.
func TestDockerignore(t *testing.T) {
	sc := bufio.NewScanner(strings.NewReader(readFile(t, "deploy", "docker", "Dockerfile.dockerignore")))
	for sc.Scan() {
		p := strings.TrimSpace(sc.Text())
		if p == "" || strings.HasPrefix(p, "#") || strings.ContainsAny(p, "*?[!") {
			continue
		}
		if p == "go.mod" || p == "go.sum" {
			t.Errorf("Dockerfile.dockerignore drops %s", p)
		}
		_ = filepath.WalkDir(repoPath(p), func(path string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
				t.Errorf("Dockerfile.dockerignore drops %s, which holds Go code (%s)", p, path)
			}
			return nil
		})
	}
}
