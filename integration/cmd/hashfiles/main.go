// Command hashfiles is the entrypoint of the integration test image: for each
// file named on its command line it prints "<sha256>  <path>" (the format of
// sha256sum), reading the file through the container's root filesystem.
// With the one argument -stdin, it does so for each path it reads from its
// standard input, one per line, until its end, printing a line per path
// ("error  <path>: <why>" for a file it cannot read): a container that
// keeps reading while a test does other things. It is built static
// (CGO_ENABLED=0) so the image needs no libc.
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
	if len(os.Args) == 2 && os.Args[1] == "-stdin" {
		os.Exit(serve(os.Stdin, os.Stdout))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func serve(stdin io.Reader, stdout io.Writer) int {
	sc := bufio.NewScanner(stdin)
	for sc.Scan() {
		p := sc.Text()
		sum, err := hashFile(p)
		if err != nil {
			fmt.Fprintf(stdout, "error  %s: %v\n", p, err)
			continue
		}
		fmt.Fprintf(stdout, "%s  %s\n", sum, p)
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
