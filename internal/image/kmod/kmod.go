// Package kmod picks kernel modules and their dependencies out of an unpacked
// kernel package. Debian's kernel package ships no modules.dep (depmod runs in
// its install script), so dependencies come from each module's own modinfo.
package kmod

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
)

// Module is one module file and the modules it needs.
type Module struct {
	Name    string   // canonical name, dashes as underscores: "ne2k_pci"
	Path    string   // relative to the modules directory
	Depends []string // canonical names
}

// canonical maps "ne2k-pci" and "ne2k_pci" to one name, as the kernel does.
func canonical(name string) string { return strings.ReplaceAll(name, "-", "_") }

// Index lists every .ko file under modDir (lib/modules/<version>) by name.
func Index(modDir string) (map[string]string, error) {
	idx := map[string]string{}
	err := filepath.WalkDir(modDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(path, ".ko") {
			rel, err := filepath.Rel(modDir, path)
			if err != nil {
				return err
			}
			idx[canonical(strings.TrimSuffix(d.Name(), ".ko"))] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot index kernel modules: %w", err)
	}
	return idx, nil
}

// ModInfo reads the key=value pairs of a module's .modinfo section.
func ModInfo(path string) (map[string][]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot open module %s: %w", filepath.Base(path), err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s has no .modinfo section", filepath.Base(path))
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("cannot read .modinfo of %s: %w", filepath.Base(path), err)
	}
	info := map[string][]string{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if ok {
			info[k] = append(info[k], v)
		}
	}
	return info, nil
}

// Resolve returns the wanted modules and everything they depend on, in an
// order that loads each module after its dependencies. Wanted modules keep
// their given order where dependencies allow, so the caller decides e.g.
// which NIC driver probes first.
func Resolve(modDir string, wanted []string) ([]Module, error) {
	idx, err := Index(modDir)
	if err != nil {
		return nil, err
	}
	var order []Module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		name = canonical(name)
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		}
		rel, ok := idx[name]
		if !ok {
			if len(chain) == 0 {
				return fmt.Errorf("no kernel module named %q in %s", name, modDir)
			}
			return fmt.Errorf("module %s needs %q, which is not in %s", chain[len(chain)-1], name, modDir)
		}
		state[name] = 1
		info, err := ModInfo(filepath.Join(modDir, rel))
		if err != nil {
			return err
		}
		var deps []string
		for _, d := range info["depends"] {
			for _, dep := range strings.Split(d, ",") {
				if dep = strings.TrimSpace(dep); dep != "" {
					deps = append(deps, canonical(dep))
					if err := visit(dep, append(chain, name)); err != nil {
						return err
					}
				}
			}
		}
		state[name] = 2
		order = append(order, Module{Name: name, Path: rel, Depends: deps})
		return nil
	}
	for _, w := range wanted {
		if err := visit(w, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
