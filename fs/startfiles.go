package fs

import (
	"bytes"
	"context"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/lazypull/lazypull/fs/internal/elfdeps"
)

// Programs read files of their own as they start, one after another,
// before they do what they were started for: the GNU C library its locale
// and time zone, Python the modules it imports before the first line of
// the program it was given. In a lazily pulled image each is a round trip.
// The start-files policy knows, by rule, what some programs read, and
// fetches it as soon as the head of such a program arrives.

// startRule returns, for the program at prog (a path in the image) whose
// ELF header says deps, the files it reads as it starts and the
// directories it reads several files of (fetched whole when small, as
// with WithDirPrefetch); nothing if the rule is not about this program.
type startRule func(stack image, prog string, deps elfdeps.Deps) (files, dirs []string)

// startRules are the programs known.
var startRules = []startRule{glibcStart, pythonStart}

// startFilesPolicy applies startRules.
type startFilesPolicy struct {
	maxDir int64 // see WithDirPrefetch
	seen   onceSet
}

func (p *startFilesPolicy) Name() string { return "start-files" }

func (p *startFilesPolicy) Attach(context.Context, *Layer, map[string]string) any { return p }

var _ HeadObserver = (*startFilesPolicy)(nil)

// HeadArrived applies the rules to file name, if it is a program.
func (p *startFilesPolicy) HeadArrived(l *Layer, name string, head []byte) {
	e, ok := l.Lookup(name)
	if !ok || e.Type != "reg" {
		return
	}
	deps, isELF, _ := elfdeps.Parse(bytes.NewReader(head), e.Size)
	if !isELF || deps.Interp == "" || !p.seen.first(string(l.Digest())+"/"+name) {
		return
	}
	l.Go("start files", func(context.Context) {
		stack := l.image()
		for _, rule := range startRules {
			files, dirs := rule(stack, "/"+name, deps)
			for _, f := range files {
				if dl, de := stack.lookup(f); de != nil {
					dl.fetchFile(de)
				}
			}
			for _, dir := range dirs {
				p.fetchDir(stack, dir)
			}
		}
	})
}

// fetchDir fetches the files of dir, in the top-most layer that has it,
// when they are small enough all together.
func (p *startFilesPolicy) fetchDir(stack image, dir string) {
	if p.maxDir <= 0 {
		return
	}
	dir = strings.TrimPrefix(path.Clean("/"+dir), "/")
	for _, l := range stack {
		if d, ok := l.Lookup(dir); ok && d.Type == "dir" {
			l.fetch(l.dirChunks(d, "", p.maxDir), Soon)
			return
		}
	}
}

// glibcFiles are what the GNU C library reads as a program starts to set
// its locale, convert characters or tell the time, one small file after
// another: paths in the image, and the C.UTF-8 locale's directories, that
// of a container whose image sets no other locale.
var (
	glibcFiles      = []string{"/etc/localtime", "/etc/nsswitch.conf", "/usr/lib/locale/C.utf8/LC_CTYPE"}
	glibcLocaleDirs = []string{"usr/lib/locale/C.utf8", "usr/lib/locale/C.utf8/LC_MESSAGES"}
)

// glibcStart is the rule of a program the GNU loader (ld-linux*) loads:
// glibcFiles, the locale's directories, and the gconv module cache beside
// the libc.so.6 the loader finds.
func glibcStart(stack image, prog string, deps elfdeps.Deps) (files, dirs []string) {
	if !strings.HasPrefix(path.Base(deps.Interp), "ld-linux") {
		return nil, nil
	}
	files = slices.Clone(glibcFiles)
	for _, dir := range elfdeps.SearchDirs(prog, deps) {
		if _, e := stack.lookup(path.Join(dir, "libc.so.6")); e != nil {
			files = append(files, path.Join(dir, "gconv/gconv-modules.cache"))
			break
		}
	}
	return files, glibcLocaleDirs
}

// pythonProgram matches the name of a Python interpreter binary.
var pythonProgram = regexp.MustCompile(`^python(\d+)\.(\d+)$`)

// pythonFrozen is the first Python 3 whose start-up modules (os, site,
// codecs, io...) are frozen into the interpreter; before it, they are read
// from the standard library too.
const pythonFrozen = 11

// Modules Python imports at start.
var (
	// pythonCodecs are those of the encodings package, read from disk by
	// every version: the package, its aliases and the UTF-8 codec.
	pythonCodecs = []string{"__init__", "aliases", "utf_8"}
	// pythonFrozenModules are those frozen from pythonFrozen on.
	pythonFrozenModules = []string{"abc", "codecs", "io", "site", "os", "stat", "_collections_abc", "posixpath", "genericpath", "_sitebuiltins"}
	// pythonCustomize are imported when present.
	pythonCustomize = []string{"sitecustomize", "usercustomize"}
)

// pythonStart is the rule of a Python interpreter: the compiled modules it
// imports from its standard library (the encodings package's directory
// whole, when it is small), and the .pth files of its site directories.
func pythonStart(stack image, prog string, _ elfdeps.Deps) (files, dirs []string) {
	m := pythonProgram.FindStringSubmatch(path.Base(prog))
	if m == nil {
		return nil, nil
	}
	minor, err := strconv.Atoi(m[2])
	if err != nil {
		return nil, nil
	}
	version := m[1] + "." + m[2]
	prefix := path.Dir(path.Dir(prog)) // /usr of /usr/bin/python3.11
	stdlib := path.Join(prefix, "lib", "python"+version)
	pyc := func(dir, module string) string {
		return path.Join(dir, "__pycache__", module+".cpython-"+m[1]+m[2]+".pyc")
	}
	var paths []string
	for _, mod := range pythonCodecs {
		paths = append(paths, pyc(path.Join(stdlib, "encodings"), mod))
	}
	modules := pythonCustomize
	if m[1] == "3" && minor < pythonFrozen {
		modules = slices.Concat(pythonFrozenModules, modules)
	}
	for _, mod := range modules {
		paths = append(paths, pyc(stdlib, mod))
	}
	siteDirs := []string{
		path.Join(stdlib, "site-packages"),
		path.Join(stdlib, "dist-packages"),
		path.Join(prefix, "lib", "python"+m[1], "dist-packages"),
		path.Join(prefix, "local", "lib", "python"+version, "dist-packages"),
	}
	paths = append(paths, pthFiles(stack, siteDirs)...)
	// The codecs a program may ask for next.
	return paths, []string{path.Join(stdlib, "encodings", "__pycache__")}
}

// pthFiles returns the .pth files of dirs in the layers of stack.
func pthFiles(stack image, dirs []string) []string {
	var files []string
	seen := map[string]bool{}
	for _, dir := range dirs {
		for _, l := range stack {
			d, ok := l.Lookup(strings.TrimPrefix(dir, "/"))
			if !ok || d.Type != "dir" {
				continue
			}
			d.ForeachChild(func(base string, _ *estargz.TOCEntry) bool {
				p := path.Join(dir, base)
				if strings.HasSuffix(base, ".pth") && !seen[p] {
					seen[p] = true
					files = append(files, p)
				}
				return true
			})
		}
	}
	return files
}
