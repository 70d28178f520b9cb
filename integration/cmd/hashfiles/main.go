// Command hashfiles is the entrypoint of the integration test image: for each
// file named on its command line it prints "<sha256>  <path>" (the format of
// sha256sum), reading the file through the container's root filesystem.
// It is built static (CGO_ENABLED=0) so the image needs no libc.
//
// With "-loop DIR" it reads requests, one line of space-separated paths
// each, from the FIFO DIR/req and answers each on the FIFO DIR/resp with a
// line per path ("<sha256>  <path>", or "error <message>") and a line ".",
// until req reaches its end: a container that keeps reading files, at the
// pace of the test that asks.
//
// With "-" as its only argument it reads the paths from stdin instead, one
// a line, and answers each on stdout as it comes, "error <path>: <why>" for
// a file it cannot read, until stdin ends.
//
// With -wait as its only argument it waits for a signal instead, to keep a
// container running.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "-loop" {
		os.Exit(loop(os.Args[2], os.Stderr))
	}
	if len(os.Args) == 2 && os.Args[1] == "-wait" {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
		<-ch
		return
	}
	if len(os.Args) == 2 && os.Args[1] == "-" {
		os.Exit(serve(os.Stdin, os.Stdout))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func loop(dir string, stderr io.Writer) int {
	req, err := os.Open(filepath.Join(dir, "req"))
	if err != nil {
		fmt.Fprintf(stderr, "hashfiles: %v\n", err)
		return 1
	}
	defer req.Close()
	resp, err := os.OpenFile(filepath.Join(dir, "resp"), os.O_WRONLY, 0)
	if err != nil {
		fmt.Fprintf(stderr, "hashfiles: %v\n", err)
		return 1
	}
	defer resp.Close()
	sc := bufio.NewScanner(req)
	w := bufio.NewWriter(resp)
	for sc.Scan() {
		for _, p := range strings.Fields(sc.Text()) {
			if sum, err := hashFile(p); err != nil {
				fmt.Fprintf(w, "error %v\n", err)
			} else {
				fmt.Fprintf(w, "%s  %s\n", sum, p)
			}
		}
		fmt.Fprintln(w, ".")
		if err := w.Flush(); err != nil {
			fmt.Fprintf(stderr, "hashfiles: %v\n", err)
			return 1
		}
	}
	return 0
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
