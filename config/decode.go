package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Error is a configuration error that points at a field of the file.
type Error struct {
	File  string // file name; empty when parsed from memory without one
	Line  int    // 1-based; 0 when the field is absent from the file
	Field string // dotted path, e.g. "regions[1].url"
	Msg   string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(":")
	}
	if e.Line > 0 {
		b.WriteString(strconv.Itoa(e.Line))
		b.WriteString(":")
	}
	if b.Len() > 0 {
		b.WriteString(" ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// decode parses data strictly: unknown fields, type mismatches and bad
// durations are errors naming the line and field.
func decode(path string, data []byte) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, syntaxError(path, err)
	}
	c := &Config{Path: path, root: &root, source: data}
	if len(root.Content) == 0 {
		return c, nil // an empty file: Validate reports what is missing
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, c.decodeError(err)
	}
	// A second document ("---") would be ignored silently: say so instead.
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, syntaxError(path, err)
	default:
		return nil, &Error{File: path, Line: next.Line, Msg: "a second YAML document; the config is one document (remove the \"---\")"}
	}
	return c, nil
}

var lineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

// decodeError turns yaml's "line N: message" errors into Errors naming the
// field found at that line. yaml reports all type errors at once; the first is
// enough to act on.
func (c *Config) decodeError(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = te.Errors[0]
	}
	m := lineRE.FindStringSubmatch(msg)
	if m == nil {
		return &Error{File: c.Path, Msg: msg}
	}
	line, _ := strconv.Atoi(m[1])
	msg = m[2]
	// Say "unknown field" plainly rather than yaml's Go type names.
	if f, ok := strings.CutPrefix(msg, "field "); ok {
		if name, _, ok := strings.Cut(f, " not found in type"); ok {
			msg = fmt.Sprintf("unknown field %q", name)
		}
	}
	msg = strings.ReplaceAll(msg, "into time.Duration", "into a duration (use e.g. 500ms, 10s, 5m)")
	return &Error{File: c.Path, Line: line, Field: fieldAt(c.root, line), Msg: msg}
}

func syntaxError(path string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &Error{File: path, Line: line, Msg: m[2]}
	}
	return &Error{File: path, Msg: msg}
}

// errorf builds an Error for field, finding its line in the file.
func (c *Config) errorf(field, format string, args ...any) error {
	return &Error{File: c.Path, Line: lineOf(c.root, field), Field: field, Msg: fmt.Sprintf(format, args...)}
}

// fieldError is returned by nested validators; the caller prefixes its path.
type fieldError struct {
	field string // relative to the validator's value, e.g. "url"
	msg   string
}

func (e *fieldError) Error() string { return e.field + ": " + e.msg }

func ferr(field, format string, args ...any) error {
	return &fieldError{field: field, msg: fmt.Sprintf(format, args...)}
}

// wrap places a nested validator's error at prefix.
func (c *Config) wrap(prefix string, err error) error {
	var fe *fieldError
	if errors.As(err, &fe) {
		return c.errorf(prefix+"."+fe.field, "%s", fe.msg)
	}
	return c.errorf(prefix, "%v", err)
}

// fieldAt names the field whose key or value is on line, as a dotted path.
func fieldAt(root *yaml.Node, line int) string {
	var best string
	var walk func(n *yaml.Node, path string) bool
	walk = func(n *yaml.Node, path string) bool {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				if walk(c, path) {
					return true
				}
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := joinPath(path, k.Value)
				if k.Line == line && (v.Kind == yaml.ScalarNode || v.Line != line) {
					best = p
					if v.Kind == yaml.ScalarNode || v.Line > line {
						return true
					}
				}
				if walk(v, p) {
					return true
				}
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				if c.Line == line && c.Kind == yaml.ScalarNode {
					best = p
					return true
				}
				if walk(c, p) {
					return true
				}
			}
		}
		return false
	}
	if root != nil {
		walk(root, "")
	}
	return best
}

func joinPath(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

var pathPartRE = regexp.MustCompile(`^([^\[]+)(?:\[(\d+)\])?$`)

// lineOf finds the line of a dotted field path such as "regions[1].url", or
// the nearest ancestor that is present; 0 if none is.
func lineOf(root *yaml.Node, field string) int {
	if root == nil || len(root.Content) == 0 {
		return 0
	}
	n := root.Content[0]
	line := 0
	for part := range strings.SplitSeq(field, ".") {
		m := pathPartRE.FindStringSubmatch(part)
		if m == nil || n.Kind != yaml.MappingNode {
			return line
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == m[1] {
				line, next = n.Content[i].Line, n.Content[i+1]
				break
			}
		}
		if next == nil {
			return line
		}
		n = next
		if m[2] != "" {
			idx, _ := strconv.Atoi(m[2])
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return line
			}
			n = n.Content[idx]
			line = n.Line
		}
	}
	return line
}

// has reports whether the file sets the field at the dotted path, so that a
// default can tell "0" from "absent".
func (c *Config) has(field string) bool {
	if c.root == nil || len(c.root.Content) == 0 {
		return false
	}
	n := c.root.Content[0]
	for part := range strings.SplitSeq(field, ".") {
		if n.Kind != yaml.MappingNode {
			return false
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == part {
				next = n.Content[i+1]
			}
		}
		if next == nil {
			return false
		}
		n = next
	}
	return true
}
