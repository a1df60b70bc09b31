package weft_test

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/weftchat/weft"

// domainPackages hold the rules of Matrix and know nothing of HTTP or SQL.
var domainPackages = []string{"room", "account", "media", "push"}

type pkg struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	// go test caches results by the files a test touches; statting every Go
	// file makes any change to the tree re-run this test.
	_ = filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".go") {
			_, _ = os.Stat(p)
		}
		return nil
	})
	cmd := exec.Command("go", "list", "-json", "./...")
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=auto")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 5 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

func rel(importPath string) string {
	return strings.TrimPrefix(strings.TrimPrefix(importPath, module), "/")
}

func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

// TestDependencyRules enforces the design notes' rules of the road; the same
// graph is drawn in docs/architecture.md.
func TestDependencyRules(t *testing.T) {
	for _, p := range listPackages(t) {
		name := rel(p.ImportPath)
		for _, bad := range []string{"util", "utils", "common", "helpers", "misc"} {
			if path.Base(name) == bad {
				t.Errorf("package %s: no util/common packages; name it for what it does", name)
			}
		}
		isDomain := false
		for _, d := range domainPackages {
			isDomain = isDomain || under(name, d)
		}
		for _, imp := range p.Imports {
			r := rel(imp)
			if isDomain {
				if imp == "net/http" || strings.HasPrefix(imp, "github.com/go-chi/") || strings.HasPrefix(imp, "github.com/jackc/") {
					t.Errorf("domain package %s imports %s: domain code must not know HTTP or SQL", name, imp)
				}
				if strings.HasPrefix(imp, module) && (under(r, "api") || under(r, "syncapi") || under(r, "federation") || under(r, "storage") || under(r, "cmd")) {
					t.Errorf("domain package %s imports %s: dependencies point inward", name, imp)
				}
			}
			// Only the wiring (cmd) and test infrastructure reach storage;
			// everything else goes through interfaces the domain declares.
			if strings.HasPrefix(imp, module) && under(r, "storage") && !under(name, "storage") &&
				!under(name, "cmd") && name != "internal/e2e" {
				t.Errorf("package %s imports %s: only cmd wires storage", name, imp)
			}
		}
		if under(name, "api") {
			for _, dep := range p.Deps {
				if strings.HasPrefix(dep, module) && under(rel(dep), "storage") {
					t.Errorf("api depends on %s (directly or not): api must not reach storage", dep)
				}
			}
		}
	}
}
