package cache

import (
	"fmt"
	"io"
	"os"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
)

// PutFrom stores under key the size bytes that r yields, as Put stores
// data, for an entry too large to hold in memory (a whole file assembled
// from its chunks). It reads r only if it writes the entry: an entry that
// Put would drop is dropped unread, and PutFrom returns nil. If r fails,
// nothing is stored and PutFrom returns r's error; unlike a failed write,
// that does not pause writes. So r can refuse, by failing at its end, an
// entry that turns out not to match key. If r yields more or fewer than
// size bytes, nothing is stored and the error is of class InvalidArgument.
func (d *Dir) PutFrom(key digest.Digest, size int64, r io.Reader) error {
	path, err := d.path(key)
	if err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("cache: entry %s of size %d: %w", key, size, errdefs.ErrInvalidArgument)
	}
	if !d.accept(size) {
		return nil
	}
	src := &errReader{r: r}
	short := false
	victims, err := d.write(key, path, size, func(f *os.File) error {
		n, err := copyLarge(f, io.LimitReader(src, size+1), size+1)
		if err == nil && n != size {
			short = true
			err = fmt.Errorf("%d bytes, want %d: %w", n, size, errdefs.ErrInvalidArgument)
		}
		return err
	})
	switch {
	case src.err != nil:
		return src.err
	case short:
		return err
	case err != nil:
		d.writeFailed(err, size)
		return err
	}
	d.evict(victims)
	return nil
}

// writeSize is the size of PutFrom's writes. The page cache keeps what a
// write brings in pieces (folios) up to its size, and a file cached in
// small ones reads back slower: a 10 MiB file written 32 KiB at a time, as
// io.Copy writes, is read at about 0.7 times the speed of one written at
// once; from 256 KiB on, writes make no difference.
const writeSize = 1 << 20

// copyLarge copies r to f until r ends, in writes of writeSize bytes (or
// of max bytes, if fewer) but for the last, and returns the bytes copied.
func copyLarge(f *os.File, r io.Reader, max int64) (int64, error) {
	buf := make([]byte, min(max, writeSize))
	var n int64
	for {
		m, err := io.ReadFull(r, buf)
		if m > 0 {
			if _, err := f.Write(buf[:m]); err != nil {
				return n, err
			}
			n += int64(m)
		}
		switch err {
		case nil:
		case io.EOF, io.ErrUnexpectedEOF:
			return n, nil
		default:
			return n, err
		}
	}
}

// errReader remembers the error of the reader it wraps, which io.Copy
// would not tell apart from an error of the writer.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}
