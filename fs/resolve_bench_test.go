package fs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"math/rand"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// BenchmarkParseTOC parses the TOC of a layer shaped like a Debian base layer
// (about 7000 entries, a TOC of about 350 KiB compressed) from the tail
// fetched with the blob, as every Mount of a new layer does before it can
// serve anything.
func BenchmarkParseTOC(b *testing.B) {
	l := buildLayer(b, baseEntries(), estargz.WithCompressionLevel(gzip.BestSpeed))
	ctx := context.Background()
	blob, tail, err := newOpener(l).Open(ctx, "", l.dgst, DefaultTailSize)
	if err != nil {
		b.Fatal(err)
	}
	var src *source
	b.ReportAllocs()
	for b.Loop() {
		if src, err = parse(ctx, l.dgst, blob, tail, DefaultLimits(), nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(src.ino)), "entries")
	b.ReportMetric(float64(blob.Size()-src.payloadEnd)/1024, "TOC-KiB")
}

// baseEntries is a tree laid out like a Debian base image: merged /usr with
// top-level symlinks, programs, shared libraries with their version
// symlinks, documentation and manual pages per package, translations,
// character maps, dpkg's database, configuration with alternatives, a few
// hardlinks, and a few files of several 4 MiB chunks.
func baseEntries() []tarEntry {
	g := &treeGen{rnd: rand.New(rand.NewSource(7)), pool: randomBytes(8, 1<<20), dirs: map[string]bool{}}
	for _, l := range []string{"bin", "lib", "lib64", "sbin"} {
		g.add(link(tar.TypeSymlink, l, "usr/"+l))
	}
	for _, d := range []string{"boot/", "dev/", "home/", "media/", "mnt/", "opt/", "proc/", "root/", "run/", "srv/", "sys/", "tmp/", "var/tmp/", "var/log/apt/", "var/cache/apt/archives/partial/"} {
		g.dir(d)
	}
	pkgs := g.names(95, 4, 10)
	for _, p := range pkgs {
		g.file("usr/share/doc/"+p+"/copyright", 800, 20<<10)
		g.file("usr/share/doc/"+p+"/changelog.Debian.gz", 300, 12<<10)
		if g.rnd.Intn(4) == 0 {
			g.file("usr/share/doc/"+p+"/NEWS.Debian.gz", 200, 4<<10)
		}
		for _, ext := range []string{"list", "md5sums", "postinst", "prerm", "shlibs", "triggers"} {
			if ext == "list" || ext == "md5sums" || g.rnd.Intn(3) == 0 {
				g.file("var/lib/dpkg/info/"+p+":amd64."+ext, 100, 16<<10)
			}
		}
	}
	for _, d := range []string{"var/lib/dpkg/status", "var/lib/dpkg/available", "var/lib/dpkg/diversions"} {
		g.file(d, 10<<10, 400<<10)
	}
	progs := g.names(420, 2, 14)
	for i, p := range progs {
		dir := "usr/bin/"
		if i%5 == 0 {
			dir = "usr/sbin/"
		}
		g.file(dir+p, 2<<10, 300<<10)
		if i%3 == 0 {
			g.file("usr/share/man/man1/"+p+".1.gz", 500, 8<<10)
		}
		if i%4 == 0 {
			g.file("usr/share/man/man8/"+p+".8.gz", 500, 8<<10)
			g.add(link(tar.TypeSymlink, "usr/share/man/man8/"+p+"-alias.8.gz", p+".8.gz"))
		}
		if i%17 == 0 {
			g.add(link(tar.TypeSymlink, "etc/alternatives/"+p, "/"+dir+p))
			g.add(link(tar.TypeSymlink, dir+p+"-alt", "/etc/alternatives/"+p))
		}
	}
	g.add(link(tar.TypeLink, "usr/bin/perl5.36.0", "usr/bin/"+progs[1]))
	g.add(link(tar.TypeLink, "usr/bin/gunzip-hard", "usr/bin/"+progs[2]))
	libs := g.names(230, 3, 12)
	for _, l := range libs {
		so := "usr/lib/x86_64-linux-gnu/lib" + l + ".so"
		g.file(so+".1.2.3", 4<<10, 900<<10)
		g.add(link(tar.TypeSymlink, so+".1", "lib"+l+".so.1.2.3"))
		g.add(link(tar.TypeSymlink, so, "lib"+l+".so.1"))
	}
	for _, m := range g.names(260, 4, 12) {
		g.file("usr/lib/x86_64-linux-gnu/gconv/"+strings.ToUpper(m)+".so", 4<<10, 40<<10)
	}
	for _, p := range pkgs[:40] {
		g.add(link(tar.TypeSymlink, "usr/share/doc/"+p+"-data", p))
	}
	for _, t := range g.names(80, 2, 14) {
		g.file("usr/share/terminfo/"+t[:1]+"/"+t, 500, 4<<10)
	}
	for i, name := range []string{"libLLVM.so.15", "libicudata.so.72.1", "libcrypto.so.3"} {
		g.big("usr/lib/x86_64-linux-gnu/"+name, (5+2*i)<<20)
	}
	langs := g.names(110, 2, 5)
	for _, lang := range langs {
		for _, p := range pkgs[:12] {
			g.file("usr/share/locale/"+lang+"/LC_MESSAGES/"+p+".mo", 1<<10, 60<<10)
		}
	}
	for _, lang := range langs[:9] {
		for _, p := range progs[:60] {
			g.file("usr/share/man/"+lang+"/man1/"+p+".1.gz", 500, 6<<10)
		}
	}
	for _, c := range g.names(190, 4, 16) {
		g.file("usr/share/i18n/charmaps/"+strings.ToUpper(c)+".gz", 1<<10, 40<<10)
	}
	for _, c := range g.names(320, 2, 6) {
		g.file("usr/share/i18n/locales/"+c+"_"+strings.ToUpper(c[:2]), 1<<10, 30<<10)
	}
	mods := g.names(80, 3, 10)
	for _, m := range mods {
		for _, s := range g.names(12, 3, 12) {
			g.file("usr/share/perl5/"+strings.ToUpper(m[:1])+m[1:]+"/"+s+".pm", 1<<10, 50<<10)
		}
	}
	for _, n := range g.names(18, 4, 12) {
		g.file("etc/init.d/"+n, 1<<10, 8<<10)
		for rl := range 7 {
			g.add(link(tar.TypeSymlink, fmt.Sprintf("etc/rc%d.d/S01%s", rl, n), "../init.d/"+n))
		}
	}
	for _, d := range []string{"init.d", "cron.daily", "pam.d", "security", "default", "logrotate.d", "apt/apt.conf.d", "profile.d", "ssl/certs", "systemd/system"} {
		for _, n := range g.names(12+g.rnd.Intn(20), 3, 12) {
			g.file("etc/"+d+"/"+n, 100, 8<<10)
		}
	}
	for _, n := range g.names(70, 3, 10) {
		g.file("etc/"+n+".conf", 100, 6<<10)
	}
	return g.es
}

// treeGen makes the entries of a generated tree, each directory before its
// first child.
type treeGen struct {
	rnd  *rand.Rand
	pool []byte // file contents are slices of it
	dirs map[string]bool
	es   []tarEntry
}

func (g *treeGen) dir(name string) {
	name = strings.TrimSuffix(name, "/")
	if name == "" || g.dirs[name] {
		return
	}
	if i := strings.LastIndexByte(name, '/'); i > 0 {
		g.dir(name[:i])
	}
	g.dirs[name] = true
	g.es = append(g.es, dir(name+"/", 0o755))
}

func (g *treeGen) add(e tarEntry) {
	if i := strings.LastIndexByte(e.hdr.Name, '/'); i > 0 {
		g.dir(e.hdr.Name[:i])
	}
	g.es = append(g.es, e)
}

// file adds a file of a size between lo and hi, skewed to small ones, but
// of a sixteenth of that size: the TOC hardly depends on it, and the layer
// builds faster.
func (g *treeGen) file(name string, lo, hi int) {
	n := (lo + int(float64(hi-lo)*g.rnd.Float64()*g.rnd.Float64()*g.rnd.Float64())) / 16
	off := g.rnd.Intn(len(g.pool) - n)
	g.add(file(name, 0o644, g.pool[off:off+n]))
}

// big adds a file of n bytes, which compress well.
func (g *treeGen) big(name string, n int) {
	g.add(file(name, 0o644, bytes.Repeat(randomBytes(int64(n), 16<<10), n/(16<<10))))
}

// names returns n distinct names of lo to hi letters.
func (g *treeGen) names(n, lo, hi int) []string {
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789-"
	seen := map[string]bool{}
	var out []string
	for len(out) < n {
		b := make([]byte, lo+g.rnd.Intn(hi-lo+1))
		for i := range b {
			b[i] = letters[g.rnd.Intn(len(letters)-11)]
			if i > 0 && g.rnd.Intn(5) == 0 {
				b[i] = letters[g.rnd.Intn(len(letters))]
			}
		}
		if s := string(b); !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
