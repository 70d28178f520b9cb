package main

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// imageSpec is a benchmark image: a Debian root filesystem with some
// packages (hack/rootfs.sh), layered by hack/mkimage into a base and an
// upper layer, plus Files in a third layer when there are any.
type imageSpec struct {
	Name     string
	Packages []string
	// Setup is run in the root filesystem once the packages are in
	// (hack/rootfs.sh's ROOTFS_SETUP): data the workload reads.
	Setup string
	// Split is mkimage's -split: the packages whose files form the upper layer.
	Split string
	Files map[string]string
	// Kind says what sort of workload Start is, for the report.
	Kind string
	// Start is the workload that starts the image's program and prints
	// one line.
	Start workload
}

// workload is a command run in a container and what the last line it
// prints must be: a regular expression matched against the whole line.
type workload struct {
	Name string
	Args []string
	Want string
}

// images are the benchmark's images, one kind of start-up each. They are
// kinds, not runtimes to tune for: an interpreter, a JIT with a large
// module image, a server answering its first request, a shell pipeline
// over many small files, and a program that reads parts of a large data
// file.
var images = []imageSpec{
	{
		Name: "python3", Packages: []string{"python3"}, Split: `^(lib)?python3`, Kind: "interpreter",
		Start: workload{Name: "start", Args: []string{"python3", "-c", "print(1)"}, Want: "1"},
	},
	{
		Name: "java", Packages: []string{"openjdk-17-jdk-headless"}, Split: `^(openjdk-|ca-certificates-java|java-common)`, Kind: "JVM, source launcher",
		Files: map[string]string{"Hello.java": "class Hello {\n\tpublic static void main(String[] args) {\n\t\tSystem.out.println(\"hello\");\n\t}\n}\n"},
		Start: workload{Name: "start", Args: []string{"java", "/Hello.java"}, Want: "hello"},
	},
	{
		// The server starts (nginx daemonizes once it listens) and answers
		// one request, made with bash's /dev/tcp from inside the container.
		Name: "nginx", Packages: []string{"nginx"}, Split: `nginx`, Kind: "server, first request",
		Start: workload{Name: "start", Args: []string{"bash", "-c",
			`nginx && exec 3<>/dev/tcp/127.0.0.1/80 && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && head -n 1 <&3`},
			Want: `HTTP/1\.1 200 OK`},
	},
	{
		// Many small files: the C and C++ headers, listed by find and
		// searched by grep (which stops reading a file at its first match).
		Name: "headers", Packages: []string{"libc6-dev", "libstdc++-12-dev"}, Split: `-dev$`, Kind: "shell pipeline, many small files",
		Start: workload{Name: "start", Args: []string{"sh", "-c",
			`find /usr/include -name '*.h' | xargs grep -l __cplusplus | wc -l`}, Want: `[0-9]+`},
	},
	{
		// A large database of which a query reads a few pages: one lookup
		// through an index, one range of 10,000 rows.
		Name: "sqlite", Packages: []string{"sqlite3"}, Split: `sqlite3`, Kind: "large data file, read in parts",
		Setup: `mkdir -p /srv
sqlite3 /srv/bench.db <<'EOF'
CREATE TABLE kv(k INTEGER PRIMARY KEY, name TEXT, v TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 1000000)
INSERT INTO kv SELECT i, printf('name-%08d', (i*7919) % 1000003), hex(randomblob(32)) FROM n;
CREATE INDEX kv_name ON kv(name);
EOF`,
		Start: workload{Name: "start", Args: []string{"sqlite3", "/srv/bench.db",
			`SELECT (SELECT k FROM kv WHERE name = 'name-00424242'), (SELECT count(*) FROM kv WHERE k BETWEEN 500000 AND 509999)`},
			Want: `[0-9]+\|10000`},
	},
}

func imageNames() []string {
	var ns []string
	for _, s := range images {
		ns = append(ns, s.Name)
	}
	return ns
}

// readAll reads every file of the image's root filesystem.
var readAll = workload{
	Name: "read-all",
	Args: []string{"sh", "-c", "find / -xdev -type f -exec cat {} + >/dev/null; echo done"},
	Want: "done",
}

// lastLineMatches reports whether the last line of out matches want (a
// regular expression, anchored at both ends).
func lastLineMatches(out, want string) bool {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	ok, err := regexp.MatchString(`^(?:`+want+`)$`, strings.TrimSpace(lines[len(lines)-1]))
	return err == nil && ok
}

// image is a built benchmark image in the registry.
type image struct {
	Spec       imageSpec `json:"-"`
	Name       string    `json:"name"`
	GzipRef    string    `json:"gzip_ref"`
	EstargzRef string    `json:"estargz_ref"`
	// PrioRef is the eStargz image converted with the files that the start
	// workload reads (PrioFiles of them) first in each layer; empty
	// without -prioritized.
	PrioRef   string `json:"prioritized_ref,omitempty"`
	PrioFiles int    `json:"prioritized_files,omitempty"`
	// ProfileChunks is how many chunks the start-up profile learned for
	// the start workload lists (modeLazyProfile); ProfileSkipped why
	// none was learned.
	ProfileChunks  int    `json:"profile_chunks,omitempty"`
	ProfileSkipped string `json:"profile_skipped,omitempty"`
	// Layers and the compressed sizes of the two variants.
	Layers       int   `json:"layers"`
	GzipBytes    int64 `json:"gzip_bytes"`
	EstargzBytes int64 `json:"estargz_bytes"`
	// Local is what lazypulld's chunk cache holds once every chunk of
	// the eStargz image is local.
	Local cacheTarget `json:"local"`

	rootfs string // the root filesystem tar
}

// builder builds the benchmark images: it runs the repository's scripts
// and tools and pushes to the registry at host ("127.0.0.1:<port>").
type builder struct {
	repo, work, bin, host string
	convertArgs           []string // more flags of every lazypull convert
	log                   io.Writer
}

// build makes the gzip image of spec with mkimage, adds its extra files,
// converts it with `lazypull convert` and measures both.
func (b *builder) build(ctx context.Context, spec imageSpec) (*image, error) {
	rootfs, err := b.outputEnv(ctx, []string{"ROOTFS_SETUP=" + spec.Setup}, filepath.Join(b.repo, "hack", "rootfs.sh"), append([]string{spec.Name}, spec.Packages...)...)
	if err != nil {
		return nil, fmt.Errorf("root filesystem: %w", err)
	}
	gzipRef, err := b.output(ctx, filepath.Join(b.work, "mkimage"), "-tmp-dir", b.work, "-split", spec.Split,
		"-cmd", strings.Join(spec.Start.Args, " "), rootfs, b.host+"/bench/"+spec.Name+":gzip")
	if err != nil {
		return nil, fmt.Errorf("mkimage: %w", err)
	}
	if len(spec.Files) > 0 {
		if gzipRef, err = appendFiles(ctx, gzipRef, spec.Files); err != nil {
			return nil, fmt.Errorf("add files: %w", err)
		}
	}
	esgzRef, err := b.convert(ctx, gzipRef, spec.Name+":estargz")
	if err != nil {
		return nil, err
	}
	img := &image{Spec: spec, Name: spec.Name, GzipRef: gzipRef, EstargzRef: esgzRef, rootfs: rootfs}
	if img.Layers, img.GzipBytes, err = layerSizes(ctx, gzipRef); err != nil {
		return nil, err
	}
	if _, img.EstargzBytes, err = layerSizes(ctx, esgzRef); err != nil {
		return nil, err
	}
	if img.Local, err = localTarget(ctx, esgzRef, b.work); err != nil {
		return nil, fmt.Errorf("%s: %w", esgzRef, err)
	}
	return img, nil
}

// convert converts the image src with `lazypull convert` and pushes it as
// bench/<dst> (NAME:TAG); args go before src.
func (b *builder) convert(ctx context.Context, src, dst string, args ...string) (string, error) {
	args = append(append(append([]string{"convert", "--plain-http", "--tmp-dir", b.work}, b.convertArgs...), args...), src, b.host+"/bench/"+dst)
	ref, err := b.output(ctx, filepath.Join(b.bin, "lazypull"), args...)
	if err != nil {
		return "", fmt.Errorf("lazypull convert: %w", err)
	}
	return ref, nil
}

// output runs a command, logging its stderr, and returns the last line of
// its stdout.
func (b *builder) output(ctx context.Context, bin string, args ...string) (string, error) {
	return b.outputEnv(ctx, nil, bin, args...)
}

// outputEnv is output with more environment variables.
func (b *builder) outputEnv(ctx context.Context, env []string, bin string, args ...string) (string, error) {
	fmt.Fprintf(b.log, "%s $ %s %s\n", time.Now().Format("15:04:05.000"), bin, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = b.repo
	cmd.Stderr = b.log
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w (its output is in the log)", filepath.Base(bin), err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(lines[len(lines)-1]), nil
}

// appendFiles adds a layer holding files (path relative to / -> content)
// to the image ref and pushes it under the same tag; it returns the new
// reference with its digest.
func appendFiles(ctx context.Context, ref string, files map[string]string) (string, error) {
	src, err := name.ParseReference(ref)
	if err != nil {
		return "", err
	}
	img, err := remote.Image(src, remote.WithContext(ctx))
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for p, content := range files {
		hdr := &tar.Header{Name: p, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			return "", err
		}
		if _, err := io.WriteString(tw, content); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		return "", err
	}
	if img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{CreatedBy: "hack/bench: add files"}}); err != nil {
		return "", err
	}
	dst, err := name.NewTag(src.Context().Name() + ":gzip")
	if err != nil {
		return "", err
	}
	if err := remote.Write(dst, img, remote.WithContext(ctx)); err != nil {
		return "", err
	}
	dgst, err := img.Digest()
	if err != nil {
		return "", err
	}
	return src.Context().Name() + "@" + dgst.String(), nil
}

// layerSizes returns the number of layers of the image ref and the sum of
// their compressed sizes.
func layerSizes(ctx context.Context, ref string) (int, int64, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return 0, 0, err
	}
	desc, err := remote.Get(r, remote.WithContext(ctx))
	if err != nil {
		return 0, 0, err
	}
	img, err := desc.Image()
	if err != nil {
		return 0, 0, err
	}
	m, err := img.Manifest()
	if err != nil {
		return 0, 0, err
	}
	var total int64
	for _, l := range m.Layers {
		total += l.Size
	}
	return len(m.Layers), total, nil
}

// tmpFile creates a file in dir that is removed when it is closed.
func tmpFile(dir string) (*os.File, error) {
	f, err := os.CreateTemp(dir, "blob-")
	if err != nil {
		return nil, err
	}
	return f, os.Remove(f.Name())
}
