package fs

import (
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// Python, the most common program of a container after the shell, imports
// modules of its own before it runs a line of the program it was given, one
// after another: its codecs package, what the distribution's sitecustomize
// adds, the .pth files of its site directories. In a lazily pulled image
// each is a round trip. When the loader prefetch meets a Python
// interpreter, prefetchPython fetches them along with its libraries.

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
	// pythonStart are those frozen from pythonFrozen on.
	pythonStart = []string{"abc", "codecs", "io", "site", "os", "stat", "_collections_abc", "posixpath", "genericpath", "_sitebuiltins"}
	// pythonCustomize are imported when present.
	pythonCustomize = []string{"sitecustomize", "usercustomize"}
)

// prefetchPython starts fetching, when prog (a path in the image of stack)
// is a Python interpreter, what it reads as it starts: the compiled
// modules it imports from its standard library (the encodings package's
// directory whole, when it is small: see WithDirPrefetch), and the .pth
// files of its site directories.
func (f *FileSystem) prefetchPython(stack []*layer, prog string) {
	m := pythonProgram.FindStringSubmatch(path.Base(prog))
	if m == nil {
		return
	}
	minor, err := strconv.Atoi(m[2])
	if err != nil {
		return
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
		modules = slices.Concat(pythonStart, modules)
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
	for _, t := range f.prefetchPaths(stack, paths...) {
		if path.Base(path.Dir(path.Dir(t.path))) == "encodings" {
			t.l.dirPrefetch(t.e.Name) // the codecs a program may ask for next
		}
	}
}

// pthFiles returns the .pth files of dirs in the layers of stack.
func pthFiles(stack []*layer, dirs []string) []string {
	var files []string
	seen := map[string]bool{}
	for _, dir := range dirs {
		for _, l := range stack {
			d, ok := l.src.r.Lookup(strings.TrimPrefix(dir, "/"))
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
