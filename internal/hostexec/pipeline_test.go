package hostexec

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// pipeline are the packages that build and snapshot the image: every program
// they start must go through Command, so none can start an i386 program of
// the image on the host unnoticed.
var pipeline = []string{"../image", "../vm"}

func TestPipelineStartsProgramsOnlyThroughHostexec(t *testing.T) {
	fset := token.NewFileSet()
	checked := 0
	for _, dir := range pipeline {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			f, err := parser.ParseFile(fset, path, nil, 0)
			if err != nil {
				return err
			}
			checked++
			execName := ""
			for _, imp := range f.Imports {
				if p, _ := strconv.Unquote(imp.Path.Value); p == "os/exec" {
					execName = "exec"
					if imp.Name != nil {
						execName = imp.Name.Name
					}
				}
				if p, _ := strconv.Unquote(imp.Path.Value); p == "syscall" || p == "golang.org/x/sys/unix" {
					ast.Inspect(f, func(n ast.Node) bool {
						if sel, ok := n.(*ast.SelectorExpr); ok && (strings.HasPrefix(sel.Sel.Name, "Exec") || sel.Sel.Name == "ForkExec" || sel.Sel.Name == "StartProcess") {
							t.Errorf("%s: %s.%s starts a program without hostexec", fset.Position(sel.Pos()), sel.X, sel.Sel.Name)
						}
						return true
					})
				}
			}
			ast.Inspect(f, func(n ast.Node) bool {
				sel, ok := n.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				if x, ok := sel.X.(*ast.Ident); ok && x.Name == execName && (sel.Sel.Name == "Command" || sel.Sel.Name == "CommandContext") {
					t.Errorf("%s: exec.%s: start programs with hostexec.Command", fset.Position(sel.Pos()), sel.Sel.Name)
				}
				if x, ok := sel.X.(*ast.Ident); ok && x.Name == "os" && sel.Sel.Name == "StartProcess" {
					t.Errorf("%s: os.StartProcess: start programs with hostexec.Command", fset.Position(sel.Pos()))
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if checked < 10 {
		t.Fatalf("checked only %d files: the pipeline's packages moved?", checked)
	}
}
