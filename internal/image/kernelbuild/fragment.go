package kernelbuild

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"strings"
)

// Option is one setting of a configuration fragment.
type Option struct {
	Name   string // e.g. CONFIG_9P_FS
	Value  string // y, n, a number or a quoted string, as .config writes it
	Reason string // the comment line above it
	Line   int
}

var (
	setLine   = regexp.MustCompile(`^(CONFIG_[A-Za-z0-9_]+)=(.+)$`)
	unsetLine = regexp.MustCompile(`^# (CONFIG_[A-Za-z0-9_]+) is not set$`)
	valueRE   = regexp.MustCompile(`^(y|m|-?[0-9]+|0x[0-9a-fA-F]+|"([^"\\]|\\.)*")$`)
)

// ParseFragment reads a kconfig fragment in the format KCONFIG_ALLCONFIG
// takes, with one rule of ours: every option has its reason on the comment
// line right above it. "m" is refused: the kernel is built without modules.
func ParseFragment(b []byte) ([]Option, error) {
	var opts []Option
	seen := map[string]int{}
	reason := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		var o Option
		if m := unsetLine.FindStringSubmatch(line); m != nil {
			o = Option{Name: m[1], Value: "n"}
		} else if m := setLine.FindStringSubmatch(line); m != nil {
			if !valueRE.MatchString(m[2]) {
				return nil, fmt.Errorf("line %d: %s has the value %q; want y, a number or a quoted string", n, m[1], m[2])
			}
			if m[2] == "m" {
				return nil, fmt.Errorf("line %d: %s=m: the kernel has no modules, build it in (=y)", n, m[1])
			}
			o = Option{Name: m[1], Value: m[2]}
		} else if line == "" {
			reason = ""
			continue
		} else if strings.HasPrefix(line, "#") {
			reason = strings.TrimSpace(strings.TrimPrefix(line, "#"))
			continue
		} else {
			return nil, fmt.Errorf("line %d: %q is neither an option, a comment nor blank", n, line)
		}
		if reason == "" {
			return nil, fmt.Errorf("line %d: %s has no reason: put a comment line saying why right above it", n, o.Name)
		}
		if first, dup := seen[o.Name]; dup {
			return nil, fmt.Errorf("line %d: %s is set again (first on line %d)", n, o.Name, first)
		}
		seen[o.Name] = n
		o.Reason, o.Line = reason, n
		opts = append(opts, o)
		reason = ""
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(opts) == 0 {
		return nil, fmt.Errorf("the fragment sets no option")
	}
	return opts, nil
}

// CheckConfig compares a final .config with the fragment it was made
// from. kconfig drops an option whose dependencies are unmet without a
// word; the build must not go on with a kernel that lacks, say, the 9p
// file system it boots from.
func CheckConfig(opts []Option, dotConfig []byte) error {
	got := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(dotConfig))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if m := setLine.FindStringSubmatch(line); m != nil {
			got[m[1]] = m[2]
		} else if m := unsetLine.FindStringSubmatch(line); m != nil {
			got[m[1]] = "n"
		}
	}
	var bad []string
	for _, o := range opts {
		v, ok := got[o.Name]
		switch {
		case !ok && o.Value == "n":
		case !ok:
			bad = append(bad, fmt.Sprintf("%s=%s (line %d): not in the final configuration (an unmet dependency, or no such option in this kernel)", o.Name, o.Value, o.Line))
		case v != o.Value:
			bad = append(bad, fmt.Sprintf("%s=%s (line %d): the final configuration has %s (an unmet dependency, or another option selects it)", o.Name, o.Value, o.Line, v))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("the kernel configuration does not have what the fragment asks for:\n  %s", strings.Join(bad, "\n  "))
	}
	return nil
}
