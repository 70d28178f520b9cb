package fs

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// TestTOCMemory measures the memory a layer's TOC takes at the default
// limits, on the worst TOC they allow: as many entries as allowed, each a
// file with its own chunk, with names as long as fill the TOC size allowed,
// all verifiable, so that the layer mounts. It is a measurement, not run
// unless LAZYPULL_MEASURE=1:
//
//	LAZYPULL_MEASURE=1 go test -run TestTOCMemory -v ./fs/
func TestTOCMemory(t *testing.T) {
	if os.Getenv("LAZYPULL_MEASURE") != "1" {
		t.Skip("a measurement: set LAZYPULL_MEASURE=1")
	}
	lim := DefaultLimits()
	n := lim.Entries - 1 // and the root
	payload := buildLayer(t, []tarEntry{file("pad", 0o644, randomBytes(9, n+(1<<20)))}, estargz.WithChunkSize(16<<20))
	dg := digest.FromString("x").String()
	entry := func(i int, name string) string {
		return fmt.Sprintf(`{"name":%q,"type":"reg","size":1,"offset":%d,"digest":%q,"chunkDigest":%q}`, name, 1000+i, dg, dg)
	}
	// Names as long as fill the TOC size allowed.
	fixed := len(entry(n, "")) + 1
	nameLen := min(maxNameComponent, int(lim.TOCSize-64)/n-fixed)
	name := func(i int) string {
		s := fmt.Sprint(i, "-")
		return s + strings.Repeat("n", nameLen-len(s))
	}
	size := int64(len(`{"version":1,"entries":[{"name":"","type":"dir"}`) + len("]}"))
	for i := range n {
		size += int64(len(entry(i, name(i))) + 1)
	}
	l := streamedLayer(t, payload, size, func(w *bufio.Writer) error {
		w.WriteString(`{"version":1,"entries":[{"name":"","type":"dir"}`)
		for i := range n {
			w.WriteString("," + entry(i, name(i)))
		}
		_, err := w.WriteString("]}")
		return err
	})
	stored := int64(len(l.blob)) - mustTOCOffset(t, l.blob)
	t.Logf("TOC: %d entries, %d MiB of JSON, %d MiB stored", n+1, size>>20, stored>>20)

	mp := measureMount(t, l)
	if _, err := os.Stat(mp + "/" + name(7)); err != nil {
		t.Error(err)
	}
}

// TestTOCMemoryDebian measures the same for a layer shaped like a Debian
// base layer (see baseEntries).
func TestTOCMemoryDebian(t *testing.T) {
	if os.Getenv("LAZYPULL_MEASURE") != "1" {
		t.Skip("a measurement: set LAZYPULL_MEASURE=1")
	}
	l := buildLayer(t, baseEntries())
	js, _ := tocOf(t, l.blob)
	t.Logf("TOC: %d KiB of JSON, %d KiB stored", len(js)>>10, (int64(len(l.blob))-mustTOCOffset(t, l.blob))>>10)
	measureMount(t, l)
}

// measureMount mounts l and logs the heap it took while mounting (its
// peak) and while mounted, and returns the mountpoint.
func measureMount(t *testing.T, l *testLayer) string {
	o := newOpener(l)
	f := newFS(t, o, WithBackgroundFetch(false))
	runtime.GC()
	base := heap()
	var peak uint64
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() {
		for {
			peak = max(peak, heap())
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
	})
	began := time.Now()
	mp := mountLayer(t, f, l)
	took := time.Since(began)
	close(done)
	wg.Wait()
	runtime.GC()
	retained := heap()
	runtime.KeepAlive(l)
	t.Logf("Mount took %v; heap: peak %d MiB above the %d MiB before, %d MiB retained while mounted; VmHWM %s",
		took, (int64(peak)-int64(base))>>20, base>>20, (int64(retained)-int64(base))>>20, vmHWM())
	return mp
}

func heap() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func vmHWM() string {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			return strings.TrimSpace(strings.TrimPrefix(line, "VmHWM:"))
		}
	}
	return "?"
}
