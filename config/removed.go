package config

import (
	"fmt"

	toml "github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// removedKeys are the keys lazypulld once read and no longer does, with
// what an operator should know. A file that still has one loads: the key is
// ignored and the daemon warns of it (Config.Removed), as containerd does
// with its deprecated keys, so that an upgrade does not stop a node over a
// key that has lost its meaning. Any other unknown key stays an error.
var removedKeys = map[string]string{
	"remote.parallelism": "every read of a layer is one range request, so there is nothing to run in parallel; remove the key",
}

// RemovedKey is a key of a configuration file that lazypulld ignores
// because it was removed.
type RemovedKey struct {
	File string // the configuration file
	Line int    // the key's line in it
	Key  string // the key, with its table: "remote.parallelism"
	Note string // why it is gone and what to do
}

func (k RemovedKey) String() string {
	return fmt.Sprintf("%s:%d: key %q was removed and is ignored: %s", k.File, k.Line, k.Key, k.Note)
}

// isRemoved reports whether key is one of removedKeys.
func isRemoved(key toml.Key) bool {
	_, ok := removedKeys[keyString(key)]
	return ok
}

// findRemoved lists the removed keys that data, the file name, holds.
func findRemoved(name string, data []byte) []RemovedKey {
	var found []RemovedKey
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
			if note, ok := removedKeys[keyString(key)]; ok {
				found = append(found, RemovedKey{File: name, Line: lineAt(data, offset), Key: keyString(key), Note: note})
			}
		}
	}
	return found
}
