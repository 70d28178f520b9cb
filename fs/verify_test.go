package fs

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// verifyEntries make a layer with every kind of entry a TOC describes: a
// file of several chunks, small files, links, a device, xattrs.
func verifyEntries() []tarEntry {
	x := file("etc/x", 0o640, []byte("has xattrs\n"))
	x.hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.note": "hello"}
	// Never served (see servedXattr), in the TOC and the tar alike: the
	// check compares what is served.
	hidden := dir("hidden/", 0o755)
	hidden.hdr.PAXRecords = map[string]string{"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.security.selinux": "x"}
	return []tarEntry{
		dir("etc/", 0o755),
		file("etc/a", 0o644, []byte("genuine a\n")),
		file("etc/b", 0o600, []byte("genuine b\n")),
		x,
		dir("data/", 0o755),
		file("data/big", 0o644, randomBytes(7, 300<<10)),
		file("data/empty", 0o644, nil),
		link('2', "data/sym", "../etc/a"),
		link('1', "data/hard", "etc/a"),
		device('3', "data/null", 1, 3),
		hidden,
	}
}

func buildVerifyLayer(t *testing.T, entries []tarEntry) *testLayer {
	t.Helper()
	return buildLayer(t, entries, estargz.WithChunkSize(64<<10))
}

// diffIDOf returns the digest of the tar that blob inflates to.
func diffIDOf(t *testing.T, blob []byte) digest.Digest {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	d := digest.Canonical.Digester()
	if _, err := io.Copy(d.Hash(), zr); err != nil {
		t.Fatal(err)
	}
	return d.Digest()
}

// chainLabels returns l's labels for a mount as chain ID chainID on a
// parent of chain ID parent ("" for none).
func chainLabels(l *testLayer, chainID, parent string) map[string]string {
	labels := l.labels()
	labels[LabelChainID] = chainID
	if parent != "" {
		labels[LabelParentChainID] = parent
	}
	return labels
}

// newVerifyFS returns a FileSystem verifying in the background, with a
// chunk cache, whose background fetch and verification start at once.
func newVerifyFS(t *testing.T, o Opener, root string, opts ...Option) *FileSystem {
	t.Helper()
	opts = append([]Option{WithCache(newMapCache()), WithVerify(VerifyBackground), WithBackgroundFetchDelay(0)}, opts...)
	f, err := New(root, o, opts...)
	if err != nil {
		t.Fatal(err)
	}
	f.cfg.verifyRetry = 10 * time.Millisecond
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return f
}

// waitVerdict waits until the layer at mp is verified or failed.
func waitVerdict(t *testing.T, f *FileSystem, mp string) Verification {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var gen uint64
	for {
		vs, g, err := f.Verifications(ctx, gen)
		if err != nil {
			t.Fatalf("no verdict on %s: %v", mp, err)
		}
		gen = g
		for _, v := range vs {
			if v.Mountpoint == mp && v.State != VerificationPending {
				return v
			}
		}
	}
}

func mountWith(t *testing.T, f *FileSystem, labels map[string]string) string {
	t.Helper()
	mp := mountpoint(t)
	if err := f.Mount(context.Background(), mp, labels); err != nil {
		t.Fatalf("Mount: %v", err)
	}
	t.Cleanup(func() {
		if err := f.Unmount(context.Background(), mp); err != nil && !errdefs.IsNotFound(err) {
			t.Errorf("Unmount: %v", err)
		}
	})
	return mp
}

// TestVerifyGoodLayer: a layer whose tar is what its TOC serves and whose
// DiffID gives the chain ID it is mounted as is verified, on its own or on
// a parent; the complete blob is handed over before the spool goes, and a
// FileSystem started again on the same root knows the verdict without
// fetching the layer again.
func TestVerifyGoodLayer(t *testing.T) {
	l := buildVerifyLayer(t, verifyEntries())
	diffID := diffIDOf(t, l.blob)
	o := newOpener(l)
	root := filepath.Join(t.TempDir(), "state")
	var handed []digest.Digest
	var mu sync.Mutex
	f := newVerifyFS(t, o, root, WithVerifiedBlob(func(dgst digest.Digest, path string) {
		b, err := os.ReadFile(path)
		mu.Lock()
		defer mu.Unlock()
		if err == nil && digest.FromBytes(b) == dgst {
			handed = append(handed, dgst)
		}
	}))
	parent := digest.FromString("parent").String()
	mp := mountWith(t, f, chainLabels(l, diffID.String(), ""))
	mpOnParent := mountWith(t, f, chainLabels(l, digest.FromString(parent+" "+diffID.String()).String(), parent))
	for _, p := range []string{mp, mpOnParent} {
		v := waitVerdict(t, f, p)
		if v.State != VerificationVerified || v.DiffID != diffID || v.Layer != l.dgst {
			t.Errorf("%s: %+v, want verified with DiffID %s", p, v, diffID)
		}
	}
	if b, err := os.ReadFile(filepath.Join(mp, "etc/a")); err != nil || string(b) != "genuine a\n" {
		t.Errorf("read after verification: %q, %v", b, err)
	}
	mu.Lock()
	if len(handed) != 1 || handed[0] != l.dgst {
		t.Errorf("verified blobs handed over: %v, want [%s]", handed, l.dgst)
	}
	mu.Unlock()
	if entries, err := os.ReadDir(f.spoolDir); err != nil || len(entries) != 0 {
		t.Errorf("spool directory after verification: %v, %v", entries, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	_, readsBefore, _ := o.counts()
	f2 := newVerifyFS(t, o, root, WithBackgroundFetch(false))
	mp2 := mountWith(t, f2, chainLabels(l, diffID.String(), ""))
	vs, _, err := f2.Verifications(context.Background(), 0)
	if err != nil || len(vs) != 1 || vs[0].Mountpoint != mp2 || vs[0].State != VerificationVerified {
		t.Errorf("after a restart: %+v, %v, want verified at once", vs, err)
	}
	if _, reads, _ := o.counts(); reads != readsBefore {
		t.Errorf("after a restart: %d blob reads, want none", reads-readsBefore)
	}
}

// TestVerifyWrongDiffID: a layer mounted as the chain ID of another
// layer's DiffID (an image whose configuration copies another image's
// DiffIDs) fails verification, and from then on reads of it fail with EIO
// through the mount, also on a file opened and read before. Its verdict
// outlives a restart: mounting the blob as that chain ID fails.
func TestVerifyWrongDiffID(t *testing.T) {
	l := buildVerifyLayer(t, verifyEntries())
	genuine := buildVerifyLayer(t, append(verifyEntries()[:1], file("etc/a", 0o644, []byte("popular a\n"))))
	claimed := diffIDOf(t, genuine.blob).String()
	o := newOpener(l)
	root := filepath.Join(t.TempDir(), "state")
	// Verification starts when the test says.
	f := newVerifyFS(t, o, root, WithBackgroundFetchDelay(time.Hour))
	mp := mountWith(t, f, chainLabels(l, claimed, ""))
	fd, err := os.Open(filepath.Join(mp, "etc/a"))
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	buf := make([]byte, 64)
	if n, err := fd.ReadAt(buf, 0); string(buf[:n]) != "genuine a\n" {
		t.Fatalf("read before verification: %q, %v", buf[:n], err)
	}
	startVerification(t, f, mp)
	v := waitVerdict(t, f, mp)
	if v.State != VerificationFailed || !strings.Contains(v.Reason, "not the snapshot's "+claimed) {
		t.Fatalf("verdict %+v, want failed naming chain ID %s", v, claimed)
	}
	if _, err := fd.ReadAt(buf, 0); !errors.Is(err, syscall.EIO) {
		t.Errorf("read of a file opened before the verdict: %v, want EIO", err)
	}
	for _, p := range []string{"etc/a", "data/big", "etc/x"} {
		if _, err := os.ReadFile(filepath.Join(mp, p)); !errors.Is(err, syscall.EIO) {
			t.Errorf("read %s after the verdict: %v, want EIO", p, err)
		}
	}
	if _, err := os.Readlink(filepath.Join(mp, "data/sym")); !errors.Is(err, syscall.EIO) {
		t.Errorf("readlink after the verdict: %v, want EIO", err)
	}
	if _, err := os.Stat(filepath.Join(mp, "etc/b")); err != nil {
		t.Errorf("stat after the verdict: %v (the tree stays)", err)
	}
	fd.Close()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	f2 := newVerifyFS(t, o, root)
	err = f2.Mount(context.Background(), mountpoint(t), chainLabels(l, claimed, ""))
	if !errdefs.IsDataLoss(err) {
		t.Errorf("Mount of a blob known to fail as that chain ID: %v, want DataLoss", err)
	}
	// As the chain ID its DiffID gives, the same blob is fine.
	mp2 := mountWith(t, f2, chainLabels(l, diffIDOf(t, l.blob).String(), ""))
	if v := waitVerdict(t, f2, mp2); v.State != VerificationVerified {
		t.Errorf("the blob as its own chain ID: %+v", v)
	}
}

// lyingLayer returns a layer whose TOC says that etc/a holds the ten bytes
// that follow its content in its gzip member (the tar's padding, zeros),
// with their digest. The mount, which verifies what it serves against the
// TOC, serves zeros as etc/a; the tar, which containerd would apply, holds
// "genuine a\n".
func lyingLayer(t *testing.T) *testLayer {
	t.Helper()
	l := buildVerifyLayer(t, verifyEntries())
	sr := io.NewSectionReader(bytes.NewReader(l.blob), 0, int64(len(l.blob)))
	tocOff, footerSize, err := estargz.OpenFooter(sr)
	if err != nil {
		t.Fatal(err)
	}
	js, release, err := tocJSON(l.blob[tocOff:int64(len(l.blob))-footerSize], DefaultLimits().TOCSize, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	var toc estargz.JTOC
	if err := json.Unmarshal(js, &toc); err != nil {
		t.Fatal(err)
	}
	for _, e := range toc.Entries {
		if e.Name == "etc/a" {
			e.InnerOffset = e.Size
			e.ChunkDigest = digest.FromBytes(make([]byte, e.Size)).String()
			e.Digest = e.ChunkDigest
		}
	}
	var out bytes.Buffer
	out.Write(l.blob[:tocOff])
	tocDgst, err := estargz.NewGzipCompressor().WriteTOCAndFooter(&out, tocOff, &toc, sha256.New())
	if err != nil {
		t.Fatal(err)
	}
	blob := out.Bytes()
	return &testLayer{entries: l.entries, blob: blob, dgst: digest.FromBytes(blob), toc: tocDgst}
}

// TestVerifyTOCLies: a layer whose TOC serves other content for a file
// than its tar holds fails verification even though its DiffID is right.
func TestVerifyTOCLies(t *testing.T) {
	l := lyingLayer(t)
	o := newOpener(l)
	f := newVerifyFS(t, o, filepath.Join(t.TempDir(), "state"))
	mp := mountWith(t, f, chainLabels(l, diffIDOf(t, l.blob).String(), ""))
	if b, err := os.ReadFile(filepath.Join(mp, "etc/a")); err != nil || !bytes.Equal(b, make([]byte, 10)) {
		t.Fatalf("the lying TOC serves etc/a as %q, %v; want zeros (else the test proves nothing)", b, err)
	}
	v := waitVerdict(t, f, mp)
	if v.State != VerificationFailed || !strings.Contains(v.Reason, `entry "etc/a"`) {
		t.Fatalf("verdict %+v, want failed on etc/a", v)
	}
	if _, err := os.ReadFile(filepath.Join(mp, "etc/a")); !errors.Is(err, syscall.EIO) {
		t.Errorf("read after the verdict: %v, want EIO", err)
	}
}

// spoolingMount mounts l on a FileSystem at root that verifies only when
// the test says (startVerification), reads data/big through the mount and
// returns the FileSystem, the mountpoint and the layer's spool.
func spoolingMount(t *testing.T, o Opener, l *testLayer, root string) (*FileSystem, string, *spool) {
	t.Helper()
	f := newVerifyFS(t, o, root, WithBackgroundFetch(false), WithBackgroundFetchDelay(time.Hour))
	mp := mountWith(t, f, chainLabels(l, diffIDOf(t, l.blob).String(), ""))
	if _, err := os.ReadFile(filepath.Join(mp, "data/big")); err != nil {
		t.Fatal(err)
	}
	return f, mp, layerAt(t, f, mp).l.src.check.Load().spool
}

// TestVerifyCorruptSpool: bytes in the spool that are not the blob's (a
// damaged disk) are no verdict on the layer: verification drops the spool,
// fetches the blob again and verifies it.
func TestVerifyCorruptSpool(t *testing.T) {
	l := buildVerifyLayer(t, verifyEntries())
	o := newOpener(l)
	f, mp, sp := spoolingMount(t, o, l, filepath.Join(t.TempDir(), "state"))
	start, _ := l.span(t, "data/big")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if end, held := sp.run(start); held && end >= start+110 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("spool holds %d bytes, not those of data/big at %d", sp.held(), start)
		}
		time.Sleep(time.Millisecond)
	}
	held := sp.held()
	if err := sp.write(bytes.Repeat([]byte{0xff}, 100), start+10); err != nil {
		t.Fatal(err)
	}
	_, _, fetchedBefore := o.counts()
	startVerification(t, f, mp)
	if v := waitVerdict(t, f, mp); v.State != VerificationVerified {
		t.Fatalf("verdict %+v, want verified after the spool was dropped", v)
	}
	// Once without what the spool held, once whole.
	if _, _, fetched := o.counts(); fetched-fetchedBefore < 2*int64(len(l.blob))-held {
		t.Errorf("verification fetched %d bytes, want at least %d: the spool was not dropped", fetched-fetchedBefore, 2*int64(len(l.blob))-held)
	}
}

// TestVerifyBeforeMount: in the strict mode Mount returns only once the
// layer is verified, with its content in the cache; a layer that fails is
// not mounted.
func TestVerifyBeforeMount(t *testing.T) {
	good := buildVerifyLayer(t, verifyEntries())
	bad := lyingLayer(t)
	o := newOpener(good, bad)
	f := newVerifyFS(t, o, filepath.Join(t.TempDir(), "state"), WithVerify(VerifyBeforeMount), WithBackgroundFetch(false))
	mp := mountWith(t, f, chainLabels(good, diffIDOf(t, good.blob).String(), ""))
	vs, _, err := f.Verifications(context.Background(), 0)
	if err != nil || len(vs) != 1 || vs[0].State != VerificationVerified {
		t.Fatalf("after Mount: %+v, %v, want verified", vs, err)
	}
	_, readsBefore, _ := o.counts()
	if b, err := os.ReadFile(filepath.Join(mp, "data/big")); err != nil || !bytes.Equal(b, randomBytes(7, 300<<10)) {
		t.Errorf("read data/big: %v", err)
	}
	if _, reads, _ := o.counts(); reads != readsBefore {
		t.Errorf("reads after a verified Mount fetched %d times, want none: verification filled the cache", reads-readsBefore)
	}
	bmp := mountpoint(t)
	err = f.Mount(context.Background(), bmp, chainLabels(bad, diffIDOf(t, bad.blob).String(), ""))
	if !errdefs.IsDataLoss(err) || isMounted(t, bmp) {
		t.Errorf("Mount of a lying layer: %v (mounted %v), want DataLoss and no mount", err, isMounted(t, bmp))
	}
}

// startVerification starts the verification of the layer at mp, as its
// background fetch does when it ends.
func startVerification(t *testing.T, f *FileSystem, mp string) {
	layerAt(t, f, mp).Local()
}

// TestSpoolsOfSharedRoot: data planes of two builds share the root during
// an upgrade. A FileSystem started on the root keeps the spools of the one
// that runs (which still verifies its layers from them) and deletes those
// a dead one left; a FileSystem that closes deletes its own.
func TestSpoolsOfSharedRoot(t *testing.T) {
	l := buildVerifyLayer(t, verifyEntries())
	o := newOpener(l)
	root := filepath.Join(t.TempDir(), "state")
	f, mp, sp := spoolingMount(t, o, l, root)
	deadline := time.Now().Add(30 * time.Second)
	for sp.held() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("nothing spooled of the blob read")
		}
		time.Sleep(time.Millisecond)
	}
	stale := filepath.Join(root, spoolDir, "left-by-a-killed-process")
	if err := os.MkdirAll(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, "sha256-00"), []byte("spooled"), 0o600); err != nil {
		t.Fatal(err)
	}

	other := newVerifyFS(t, o, root)
	if _, err := os.Stat(sp.path); err != nil {
		t.Errorf("the running FileSystem's spool after another started on its root: %v", err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("spools of a dead process after a start: %v, want them gone", err)
	}
	startVerification(t, f, mp)
	if v := waitVerdict(t, f, mp); v.State != VerificationVerified {
		t.Errorf("verdict %+v, want verified", v)
	}
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(other.spoolDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a closed FileSystem's spool directory: %v, want it gone", err)
	}
	if _, err := os.Stat(f.spoolDir); err != nil {
		t.Errorf("the running FileSystem's spool directory after another closed: %v", err)
	}
}
