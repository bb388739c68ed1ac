package main

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// A streamed result's parts are nearly all of what a large result sends,
// and encoding/json spends most of its time on them reflecting over
// [][]*string one value at a time. appendPart writes a part by hand, the
// same bytes encoding/json would (TestAppendPart compares them), and
// cost about a third of the instructions (docs/agent-protocol.md, "Where
// a 1 MB result's time goes").

// appendPart appends p as one JSON line.
func appendPart(b []byte, p part) ([]byte, error) {
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, p.ID, 10)
	b = append(b, `,"more":`...)
	b = strconv.AppendBool(b, p.More)
	b = append(b, `,"statement":`...)
	b = strconv.AppendInt(b, int64(p.Statement), 10)
	if len(p.Columns) > 0 {
		cols, err := json.Marshal(p.Columns)
		if err != nil {
			return b, err
		}
		b = append(b, `,"columns":`...)
		b = append(b, cols...)
	}
	b = append(b, `,"rows":`...)
	b = appendRows(b, p.Rows)
	return append(b, "}\n"...), nil
}

func appendRows(b []byte, rows [][]*string) []byte {
	if rows == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, row := range rows {
		if i > 0 {
			b = append(b, ',')
		}
		if row == nil {
			b = append(b, "null"...)
			continue
		}
		b = append(b, '[')
		for j, v := range row {
			if j > 0 {
				b = append(b, ',')
			}
			if v == nil {
				b = append(b, "null"...)
			} else {
				b = appendString(b, *v)
			}
		}
		b = append(b, ']')
	}
	return append(b, ']')
}

const hexDigits = "0123456789abcdef"

// appendString quotes s as encoding/json does with HTML escaping off:
// quote, backslash and control characters escaped (\n, \r, \t short),
// U+2028 and U+2029 escaped, invalid UTF-8 replaced by U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
