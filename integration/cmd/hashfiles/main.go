// Command hashfiles is the entrypoint of the integration test image: for each
// file named on its command line it prints "<sha256>  <path>" (the format of
// sha256sum), reading the file through the container's root filesystem.
// With "-" as its only argument it reads the paths from stdin instead, one
// a line, and answers each on stdout as it comes, "error <path>: <why>" for
// a file it cannot read, until stdin ends: a test paces the reads of a
// running container that way. It is built static (CGO_ENABLED=0) so the
// image needs no libc.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "-" {
		os.Exit(serve(os.Stdin, os.Stdout))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// serve hashes the files named by the lines of in, answering each on out.
func serve(in io.Reader, out io.Writer) int {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		p := sc.Text()
		if p == "" {
			continue
		}
		if sum, err := hashFile(p); err != nil {
			fmt.Fprintf(out, "error %s: %v\n", p, err)
		} else {
			fmt.Fprintf(out, "%s  %s\n", sum, p)
		}
	}
	if sc.Err() != nil {
		return 1
	}
	return 0
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
