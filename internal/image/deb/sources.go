package deb

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// MirrorFromHost returns the Debian archive URI the host's apt is configured
// with. The image build reads it rather than naming a mirror, so it works
// behind whatever mirror or proxy the machine uses.
func MirrorFromHost(etcApt string) (string, error) {
	var files []string
	if _, err := os.Stat(filepath.Join(etcApt, "sources.list")); err == nil {
		files = append(files, filepath.Join(etcApt, "sources.list"))
	}
	parts, err := filepath.Glob(filepath.Join(etcApt, "sources.list.d", "*"))
	if err != nil {
		return "", fmt.Errorf("cannot list apt sources: %w", err)
	}
	sort.Strings(parts)
	files = append(files, parts...)
	for _, name := range files {
		var parse func(io.Reader) []source
		switch {
		case strings.HasSuffix(name, ".sources"):
			parse = parseDeb822
		case strings.HasSuffix(name, ".list"):
			parse = parseOneLine
		default:
			continue
		}
		f, err := os.Open(name)
		if err != nil {
			return "", fmt.Errorf("cannot read apt sources: %w", err)
		}
		srcs := parse(f)
		f.Close()
		for _, s := range srcs {
			if s.isDebianMain() {
				return strings.TrimSuffix(s.uri, "/"), nil
			}
		}
	}
	return "", errors.New("no Debian archive (a 'deb' source with suite bookworm, trixie, sid... and component main, not -security) in the host's apt sources")
}

type source struct {
	types      []string
	uri        string
	suites     []string
	components []string
}

// debianSuites are the suite names that identify the main Debian archive
// (as opposed to security or third-party repositories).
var debianSuites = map[string]bool{
	"bullseye": true, "bookworm": true, "trixie": true, "forky": true,
	"sid": true, "unstable": true, "testing": true, "stable": true, "oldstable": true,
}

func (s source) isDebianMain() bool {
	hasDeb, hasSuite, hasMain := false, false, false
	for _, t := range s.types {
		hasDeb = hasDeb || t == "deb"
	}
	for _, su := range s.suites {
		hasSuite = hasSuite || debianSuites[su]
	}
	for _, c := range s.components {
		hasMain = hasMain || c == "main"
	}
	return hasDeb && hasSuite && hasMain && s.uri != ""
}

// parseDeb822 reads the paragraphs of a .sources file.
func parseDeb822(r io.Reader) []source {
	var out []source
	cur := map[string]string{}
	flush := func() {
		if len(cur) == 0 {
			return
		}
		if !strings.EqualFold(cur["enabled"], "no") {
			for _, uri := range strings.Fields(cur["uris"]) {
				out = append(out, source{
					types:      strings.Fields(cur["types"]),
					uri:        uri,
					suites:     strings.Fields(cur["suites"]),
					components: strings.Fields(cur["components"]),
				})
			}
		}
		cur = map[string]string{}
	}
	sc := bufio.NewScanner(r)
	last := ""
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "":
			flush()
		case strings.HasPrefix(line, "#"):
		case line[0] == ' ' || line[0] == '\t':
			if last != "" {
				cur[last] += " " + strings.TrimSpace(line)
			}
		default:
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			last = strings.ToLower(strings.TrimSpace(k))
			cur[last] = strings.TrimSpace(v)
		}
	}
	flush()
	return out
}

// parseOneLine reads the classic "deb [opts] uri suite comp..." format.
func parseOneLine(r io.Reader) []source {
	var out []source
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		typ := f[0]
		f = f[1:]
		if strings.HasPrefix(f[0], "[") {
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) == 0 {
				continue
			}
			f = f[1:]
		}
		if len(f) < 2 {
			continue
		}
		out = append(out, source{types: []string{typ}, uri: f[0], suites: []string{f[1]}, components: f[2:]})
	}
	return out
}
