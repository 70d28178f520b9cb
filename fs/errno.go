package fs

import (
	"context"
	"errors"
	"syscall"

	"github.com/containerd/errdefs"
)

// toErrno is the one place errors become FUSE errnos. Content that fails
// verification, and any fetch failure, is EIO: the caller gets an error,
// never wrong bytes.
func toErrno(err error) syscall.Errno {
	var errno syscall.Errno
	switch {
	case err == nil:
		return 0
	case errors.As(err, &errno):
		return errno
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	case errors.Is(err, context.DeadlineExceeded):
		return syscall.ETIMEDOUT
	case errdefs.IsNotFound(err):
		return syscall.ENOENT
	}
	return syscall.EIO
}
