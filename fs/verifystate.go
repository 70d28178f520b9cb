package fs

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/containerd/log"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Where verification keeps its state under the FileSystem's root.
const (
	spoolDir    = "spool"
	verifiedDir = "verified"
	// maxResults bounds the results kept in verifiedDir (about 150 bytes
	// each); beyond it, New deletes those least recently used.
	maxResults = 1 << 16
	// minVerifyRetry and maxVerifyRetry bound the wait before a
	// verification that could not finish is tried again.
	minVerifyRetry = 30 * time.Second
	maxVerifyRetry = 30 * time.Minute
)

func (f *FileSystem) resultPath(dgst digest.Digest) string {
	return filepath.Join(f.root, verifiedDir, dgst.Algorithm().String()+"-"+dgst.Encoded()+".json")
}

// loadResult returns what an earlier verification found of blob dgst, or
// nil.
func (f *FileSystem) loadResult(dgst digest.Digest) *blobResult {
	p := f.resultPath(dgst)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil
	}
	var res blobResult
	if err := json.Unmarshal(b, &res); err != nil || (res.Failure == "" && res.DiffID.Validate() != nil) {
		log.G(f.life).WithField("path", p).Warn("ignoring a malformed verification result")
		return nil
	}
	now := time.Now()
	_ = os.Chtimes(p, now, now) // used: kept longest by pruneResults
	return &res
}

// saveResult keeps res for blob dgst. Processes sharing the root may save
// the same result at once.
func (f *FileSystem) saveResult(dgst digest.Digest, res *blobResult) error {
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	return replaceFile(f.resultPath(dgst), func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
}

// prepareVerifyDirs creates the directories of verification state and
// returns the FileSystem's own spool directory, locked for as long as the
// returned file is open. Several FileSystems (several data planes, during
// an upgrade) may share root: each spools in a directory of its own, and
// the spools of one that is gone, found unlocked, are deleted (what they
// held was known only to it). The kept results are pruned to maxResults.
func prepareVerifyDirs(root string) (dir string, lock *os.File, err error) {
	spools := filepath.Join(root, spoolDir)
	for _, d := range []string{spools, filepath.Join(root, verifiedDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", nil, err
		}
	}
	if dir, err = os.MkdirTemp(spools, ""); err != nil {
		return "", nil, err
	}
	if lock, err = lockDir(dir, true); err != nil {
		os.Remove(dir)
		return "", nil, err
	}
	removeStaleSpools(spools, dir)
	pruneResults(filepath.Join(root, verifiedDir))
	return dir, lock, nil
}

// lockDir opens dir and takes an exclusive lock on it, waiting for it if
// wait, else failing if another process holds it.
func lockDir(dir string, wait bool) (*os.File, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	how := unix.LOCK_EX
	if !wait {
		how |= unix.LOCK_NB
	}
	if err := unix.Flock(int(d.Fd()), how); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// removeStaleSpools deletes, in spools, what no live FileSystem holds:
// directories no process has locked, and the files of an older layout.
func removeStaleSpools(spools, own string) {
	entries, err := os.ReadDir(spools)
	if err != nil {
		return
	}
	for _, e := range entries {
		p := filepath.Join(spools, e.Name())
		if p == own {
			continue
		}
		if e.IsDir() {
			l, err := lockDir(p, false)
			if err != nil {
				continue // in use, or gone meanwhile
			}
			err = os.RemoveAll(p)
			l.Close()
			if err != nil {
				log.L.WithError(err).WithField("spool", p).Warn("failed to remove the spools of an earlier run")
			}
			continue
		}
		os.Remove(p)
	}
}

// pruneResults deletes the least recently used results in dir beyond
// maxResults.
func pruneResults(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) <= maxResults {
		return
	}
	type aged struct {
		name string
		t    time.Time
	}
	var files []aged
	for _, e := range entries {
		if info, err := e.Info(); err == nil {
			files = append(files, aged{e.Name(), info.ModTime()})
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].t.Before(files[j].t) })
	for _, a := range files[:max(len(files)-maxResults*3/4, 0)] {
		os.Remove(filepath.Join(dir, a.name))
	}
}
