package fs

import "context"

// containerFiles are read from the image when any container of it is
// created, before its program starts: the runtime resolves the user and
// its groups there (containerd, the CRI plugin and Docker do).
var containerFiles = []string{"etc/passwd", "etc/group"}

// containerFilesPolicy fetches containerFiles from every layer that has
// them as it is mounted.
type containerFilesPolicy struct{}

func (containerFilesPolicy) Name() string { return "container-files" }

func (containerFilesPolicy) Attach(_ context.Context, l *Layer, _ map[string]string) any {
	for _, name := range containerFiles {
		if e, ok := l.Lookup(name); ok && e.Type == "reg" {
			l.fetchFile(e)
		}
	}
	return nil
}
