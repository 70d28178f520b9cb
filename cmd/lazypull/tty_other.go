//go:build !linux

package main

import "os"

// isTTY guesses: a character device is taken for a terminal.
func isTTY(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
