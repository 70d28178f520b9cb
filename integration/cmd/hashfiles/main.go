// Command hashfiles is the entrypoint of the integration test image: for each
// file named on its command line it prints "<sha256>  <path>" (the format of
// sha256sum), reading the file through the container's root filesystem.
// With -wait as its only argument it waits for a signal instead, to keep a
// container running. It is built static (CGO_ENABLED=0) so the image needs
// no libc.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "-wait" {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
		<-ch
		return
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(paths []string, stdout, stderr io.Writer) int {
	code := 0
	for _, p := range paths {
		sum, err := hashFile(p)
		if err != nil {
			fmt.Fprintf(stderr, "hashfiles: %v\n", err)
			code = 1
			continue
		}
		fmt.Fprintf(stdout, "%s  %s\n", sum, p)
	}
	return code
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
