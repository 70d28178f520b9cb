package fs

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestPassthroughConcurrentOpens checks that files opened, read and
// closed by many readers at once, through overlay mounts as the containers
// of images sharing a layer do when they start together, always open and
// read whole, whether served by passthrough or not: the kernel refuses an
// open whose io mode conflicts with the handles it still holds, and a
// refusal reaches the reader as EIO.
func TestPassthroughConcurrentOpens(t *testing.T) {
	var entries []tarEntry
	for i := range 200 {
		entries = append(entries, file(fmt.Sprintf("f%03d", i), 0o644, randomBytes(int64(100+i), 2000+i*13)))
	}
	l := buildLayer(t, entries)
	o := newOpener(l)
	o.link = &netLink{rtt: 2 * time.Millisecond, rate: 64 << 20}
	f := newFS(t, o, WithCache(newDirCache(t)), WithBackgroundFetch(false))
	mp := mountLayer(t, f, l)
	skipWithoutPassthrough(t, f, mp)
	var merged []string
	for range 8 {
		d := t.TempDir()
		m := filepath.Join(d, "m")
		for _, s := range []string{m, filepath.Join(d, "u"), filepath.Join(d, "w")} {
			if err := os.Mkdir(s, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := unix.Mount("overlay", m, "overlay", 0, "lowerdir="+mp+",upperdir="+filepath.Join(d, "u")+",workdir="+filepath.Join(d, "w")+",index=off,redirect_dir=nofollow,metacopy=off"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Unmount(m, unix.MNT_DETACH) })
		merged = append(merged, m)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for g := range 32 {
		root := merged[g%len(merged)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(g)))
			for range 3 {
				for _, i := range r.Perm(len(entries)) {
					e := entries[i]
					b, err := os.ReadFile(filepath.Join(root, e.hdr.Name))
					if err == nil && !bytes.Equal(b, e.data) {
						err = fmt.Errorf("%s: wrong content", e.hdr.Name)
					}
					if err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
