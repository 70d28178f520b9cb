package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lazypull/lazypull/integration/testbed"
	"github.com/lazypull/lazypull/integration/testimage"
)

// pacedReader is a running container of the test image whose entrypoint
// hashes the files the test names, one at a time, as the test names them:
// the reads of a long-running workload, paced by the test.
type pacedReader struct {
	in    io.WriteCloser
	lines chan string   // the container's answers; closed when it exits
	done  chan struct{} // closed when ctr has exited, with exit set
	exit  error
	mu    sync.Mutex
	errb  bytes.Buffer
}

// startPacedReader starts container id of ref; it runs until the test
// ends.
func startPacedReader(t *testing.T, ctx context.Context, lb *lazyBed, ref, id string) *pacedReader {
	t.Helper()
	cmd := lb.Containerd.RunCommand(ctx, testbed.SnapshotterName, ref, id, "/"+testimage.EntrypointPath, "-")
	r := &pacedReader{lines: make(chan string, 16), done: make(chan struct{})}
	var err error
	if r.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = writerFunc(func(p []byte) (int, error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.errb.Write(p)
	})
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { // ends when the container's stdout does
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			r.lines <- sc.Text()
		}
		close(r.lines)
	}()
	go func() {
		r.exit = cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		r.in.Close() // the entrypoint exits at the end of its input
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Errorf("container %s did not exit 30s after its input ended", id)
			<-r.done
		}
	})
	return r
}

// read names path and returns the container's answer, as hashfiles prints
// it, and how long it took to come. It fails t if none comes.
func (r *pacedReader) read(t *testing.T, path string) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	if _, err := fmt.Fprintln(r.in, path); err != nil {
		t.Fatalf("send %s to the container: %v", path, err)
	}
	select {
	case line, ok := <-r.lines:
		if !ok {
			<-r.done
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("the container exited while reading %s: %v\n%s", path, r.exit, r.errb.String())
		}
		return line, time.Since(start)
	case <-time.After(3 * time.Minute):
		t.Fatalf("no answer for %s in 3 minutes", path)
		return "", 0
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// hashLine is what hashfiles prints for path of tree.
func hashLine(t *testing.T, tree testimage.Tree, path string) string {
	t.Helper()
	return strings.TrimSuffix(probeOutput(t, tree, path), "\n")
}
