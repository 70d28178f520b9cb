package testimage

import (
	"archive/tar"
	"fmt"
	"math/rand/v2"
)

// Sizes of the generated large files.
const (
	BigFileSize   = 9<<20 + 12345 // larger than 8 MiB and not chunk aligned
	ChunkFileSize = 4 << 20       // exactly one default eStargz chunk
	SmallFiles    = 2500
)

// EntrypointPath is where Default puts the entrypoint binary.
const EntrypointPath = "entry"

// Default returns the layers of the project's test image. entrypoint is the
// content of /entry (a static binary); it is also installed setuid as
// /bin/suid.
func Default(entrypoint []byte) []Layer {
	return []Layer{base(entrypoint), manyFiles(), top()}
}

// Pseudo returns n deterministic pseudo-random bytes for seed.
func Pseudo(seed uint64, n int) []byte {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b)
	return b
}

func owned(e Entry, uid, gid int) Entry {
	e.UID, e.GID = uid, gid
	return e
}

func withXattrs(e Entry, x map[string]string) Entry {
	e.Xattrs = x
	return e
}

func base(entrypoint []byte) Layer {
	return Layer{Entries: []Entry{
		File(EntrypointPath, 0o755, entrypoint),
		Dir("bin", 0o755),
		File("bin/suid", 0o4755, entrypoint),
		File("bin/sgid", 0o2755, []byte("#!/bin/sh\necho setgid\n")),

		Dir("data", 0o755),
		File("data/big", 0o644, Pseudo(1, BigFileSize)),
		File("data/chunk4m", 0o644, Pseudo(2, ChunkFileSize)),
		File("data/empty", 0o644, nil),
		File("data/one", 0o644, []byte("1")),
		File("data/hello", 0o644, []byte("hello, lazypull\n")),
		File("data/typechange", 0o644, []byte("a file that becomes a directory\n")),

		Dir("del", 0o755),
		File("del/gone", 0o644, []byte("deleted by the next layer\n")),
		File("del/kept", 0o644, []byte("kept\n")),
		Dir("deldir", 0o755),
		File("deldir/a", 0o644, []byte("a\n")),
		Dir("deldir/sub", 0o755),
		File("deldir/sub/b", 0o644, []byte("b\n")),
		Dir("opq", 0o755),
		File("opq/old1", 0o644, []byte("hidden by the opaque dir\n")),
		Dir("opq/olddir", 0o755),
		File("opq/olddir/old2", 0o644, []byte("hidden too\n")),

		Dir("hl", 0o755),
		File("hl/a", 0o644, []byte("one inode, three names\n")),
		Hardlink("hl/b", "hl/a"),
		Dir("hl/sub", 0o755),
		Hardlink("hl/sub/c", "hl/a"),

		Dir("links", 0o755),
		Symlink("links/rel", "../data/hello"),
		Symlink("links/abs", "/data/hello"),
		Symlink("links/dangling", "/does/not/exist"),
		Symlink("links/dir", "../data"),
		Symlink("links/willbefile", "../data/hello"),

		Dir("modes", 0o755),
		Dir("modes/d0700", 0o700),
		File("modes/d0700/secret", 0o600, []byte("secret\n")),
		Dir("modes/d0711", 0o711),
		File("modes/d0711/x", 0o644, []byte("x\n")),
		Dir("modes/sticky", 0o1777),
		Dir("modes/setgid", 0o2775),
		Dir("modes/d0555", 0o555),
		File("modes/d0555/ro", 0o444, []byte("read only\n")),
		File("modes/f0000", 0o000, []byte("no permissions\n")),
		File("modes/exec0700", 0o700, []byte("#!/bin/sh\n")),
		{Name: "modes/fifo", Type: tar.TypeFifo, Mode: 0o640},

		owned(Dir("owned", 0o750), 1000, 1000),
		owned(File("owned/user", 0o640, []byte("uid 1000\n")), 1000, 1000),
		owned(File("owned/nobody", 0o644, []byte("uid 65534\n")), 65534, 65534),
		owned(File("owned/groupy", 0o664, []byte("gid 1234\n")), 0, 1234),
		owned(Symlink("owned/link", "user"), 1000, 1000),

		withXattrs(Dir("xattr", 0o755), map[string]string{"user.dir": "on a directory"}),
		withXattrs(File("xattr/file", 0o644, []byte("has xattrs\n")), map[string]string{
			"user.lazypull.test": "hello",
			"user.other":         "a longer value with spaces and = signs",
		}),
	}}
}

func manyFiles() Layer {
	es := []Entry{
		Whiteout("del/gone"),
		Whiteout("deldir"),
		Dir("opq", 0o755),
		Opaque("opq"),
		File("opq/new", 0o644, []byte("the only file in the opaque dir\n")),
		File("data/one", 0o644, []byte("overwritten by layer 2\n")),
		Dir("hl2", 0o755),
		File("hl2/x", 0o755, []byte("hardlinked in layer 2\n")),
		Hardlink("hl2/y", "hl2/x"),
		Dir("many", 0o755),
	}
	const perDir = 100
	for i := range SmallFiles {
		if i%perDir == 0 {
			es = append(es, Dir(fmt.Sprintf("many/d%02d", i/perDir), 0o755))
		}
		data := []byte(fmt.Sprintf("small file %d\n", i))
		for range i % 37 {
			data = append(data, byte('a'+i%26))
		}
		es = append(es, File(fmt.Sprintf("many/d%02d/f%04d", i/perDir, i), 0o644, data))
	}
	return Layer{Entries: es}
}

func top() Layer {
	return Layer{Entries: []Entry{
		Dir("deldir", 0o755),
		File("deldir/new", 0o644, []byte("recreated after the whiteout\n")),
		Dir("data", 0o755),
		Dir("data/typechange", 0o755),
		File("data/typechange/inner", 0o644, []byte("was a file\n")),
		Dir("links", 0o755),
		File("links/willbefile", 0o644, []byte("was a symlink\n")),
		Dir("many", 0o755),
		Dir("many/d00", 0o755),
		Whiteout("many/d00/f0000"),
	}}
}

// ProbeFiles are absolute paths in the Default image worth reading from a
// container: every kind of regular file, reached directly, through
// hardlinks, through a symlinked directory, and across whiteouts.
var ProbeFiles = []string{
	"/entry", "/bin/suid", "/data/big", "/data/chunk4m", "/data/empty", "/data/one",
	"/data/hello", "/links/rel", "/links/abs", "/links/dir/big", "/links/willbefile",
	"/del/kept", "/deldir/new", "/opq/new", "/hl/a", "/hl/sub/c", "/hl2/y",
	"/data/typechange/inner", "/modes/d0700/secret", "/modes/f0000", "/owned/user",
	"/xattr/file", "/many/d00/f0001", "/many/d24/f2499",
}
