package config

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// Load reads the file at path over the defaults and validates the result:
// keys missing from the file keep their Default value. Keys that were
// removed from lazypulld are ignored and listed in Config.Removed.
//
// Errors start with the path and, where the problem has one, the line
// ("/etc/lazypull/config.toml:3: unknown key \"roots\""). A file that does not
// exist gives an error that matches fs.ErrNotExist, so a caller can tell "no
// file" from "bad file".
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cfg := Default()
	if err := decode(path, data, cfg); err != nil {
		return nil, err
	}
	cfg.Removed = findRemoved(path, data)
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// decode strictly decodes data into v (a pointer to a struct) and rewrites
// go-toml's errors as "name:LINE: ..." messages naming the key.
func decode(name string, data []byte, v any) error {
	err := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields().Decode(v)
	if err == nil {
		return nil
	}
	var strictErr *toml.StrictMissingError
	if errors.As(err, &strictErr) {
		errs := make([]error, 0, len(strictErr.Errors))
		for i := range strictErr.Errors {
			de := &strictErr.Errors[i]
			if isRemoved(de.Key()) {
				continue
			}
			line, _ := de.Position()
			errs = append(errs, fmt.Errorf("%s:%d: unknown key %q", name, line, keyString(de.Key())))
		}
		return errors.Join(errs...)
	}
	var decErr *toml.DecodeError
	if errors.As(err, &decErr) {
		line, col := decErr.Position()
		msg := strings.TrimPrefix(decErr.Error(), "toml: ")
		if len(decErr.Key()) == 0 {
			// A syntax error: the column helps more than a key.
			return fmt.Errorf("%s:%d:%d: %s", name, line, col, msg)
		}
		key := decErr.Key()
		if strings.HasPrefix(msg, "cannot decode TOML ") {
			msg = typeMessage(msg, fieldType(reflect.TypeOf(v).Elem(), key))
		}
		return fmt.Errorf("%s:%d: key %q: %s", name, line, keyString(key), msg)
	}
	// go-toml hands a non-string value to a TextUnmarshaler (Duration,
	// Size) and returns that method's error without a position; find the
	// value it choked on.
	if key, line, ok := locateTextError(data, reflect.TypeOf(v).Elem()); ok {
		return fmt.Errorf("%s:%d: key %q: %w", name, line, keyString(key), err)
	}
	return fmt.Errorf("%s: %w", name, err)
}

// typeMessage turns go-toml's "cannot decode TOML integer into struct field
// config.Config.Root of type string" into "integer given, want a string".
func typeMessage(msg string, want reflect.Type) string {
	got, _, ok := strings.Cut(strings.TrimPrefix(msg, "cannot decode TOML "), " into ")
	if !ok || want == nil {
		return msg
	}
	return fmt.Sprintf("%s given, want %s", got, describe(want))
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// describe names the TOML value a Go type is decoded from.
func describe(t reflect.Type) string {
	switch {
	case t == reflect.TypeFor[Duration]():
		return `a duration string such as "30s"`
	case t == reflect.TypeFor[Size]():
		return `a size such as "64MiB" or an integer number of bytes`
	case reflect.PointerTo(t).Implements(textUnmarshaler):
		return "a string"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "a table"
	}
	return t.String()
}

// fieldType follows key through the toml tags of t and returns the type of
// the field it names, or nil.
func fieldType(t reflect.Type, key toml.Key) reflect.Type {
	for _, part := range key {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return nil
		}
		f, ok := fieldByTag(t, part)
		if !ok {
			return nil
		}
		t = f.Type
	}
	return t
}

func fieldByTag(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if tag == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// locateTextError finds the first key-value of data whose non-string value
// go-toml would pass to a TextUnmarshaler field of t that rejects it. It
// returns the key and its line.
func locateTextError(data []byte, t reflect.Type) (toml.Key, int, bool) {
	var p unstable.Parser
	p.Reset(data)
	var table toml.Key
	for p.NextExpression() {
		expr := p.Expression()
		switch expr.Kind {
		case unstable.Table, unstable.ArrayTable:
			table, _ = nodeKey(expr)
		case unstable.KeyValue:
			k, offset := nodeKey(expr)
			key := append(table[:len(table):len(table)], k...)
			if rejectsText(fieldType(t, key), expr.Value()) {
				return key, lineAt(data, offset), true
			}
		}
	}
	return nil, 0, false
}

// rejectsText reports whether a value of type ft fails to decode the
// non-string value v through its UnmarshalText method.
func rejectsText(ft reflect.Type, v *unstable.Node) bool {
	if ft == nil || v == nil || v.Kind == unstable.String || !reflect.PointerTo(ft).Implements(textUnmarshaler) {
		return false
	}
	switch ft.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if v.Kind == unstable.Integer {
			return false // decoded natively, without UnmarshalText
		}
	}
	u := reflect.New(ft).Interface().(encoding.TextUnmarshaler)
	return u.UnmarshalText(v.Data) != nil
}

// lineAt is the line of data that offset is on, counted from 1.
func lineAt(data []byte, offset int) int {
	return 1 + bytes.Count(data[:offset], []byte("\n"))
}

// nodeKey returns the parts of an expression's key and the offset of its
// first part in the document.
func nodeKey(expr *unstable.Node) (toml.Key, int) {
	var key toml.Key
	offset := -1
	it := expr.Key()
	for it.Next() {
		n := it.Node()
		if offset < 0 {
			offset = int(n.Raw.Offset)
		}
		key = append(key, string(n.Data))
	}
	return key, max(offset, 0)
}

// keyString writes a key the way it would be written in the file.
func keyString(key toml.Key) string {
	parts := make([]string, len(key))
	for i, p := range key {
		if p == "" || strings.ContainsFunc(p, func(r rune) bool {
			return !(r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
		}) {
			p = strconv.Quote(p)
		}
		parts[i] = p
	}
	return strings.Join(parts, ".")
}
