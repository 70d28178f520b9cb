package fs

import "context"

// defaultPolicies are the policies of a FileSystem, in the order they see
// events: each is one file, and removing it from this list turns it off.
// Their options are read here, once.
func (f *FileSystem) defaultPolicies() []Policy {
	cfg := &f.cfg
	ps := []Policy{
		// The layer's own list of the files read at start-up.
		&landmarkPolicy{concurrency: cfg.fetchConcurrency, memory: cfg.memCacheSize, wait: cfg.prefetchWait},
		// The user and group files the runtime reads before the program runs.
		containerFilesPolicy{},
		// Windows in blob order after a reader's reads.
		&readaheadPolicy{base: cfg.readahead},
		// The other small files of a directory a reader missed in.
		&dirPolicy{max: cfg.dirPrefetch},
	}
	if cfg.loaderPrefetch {
		ps = append(ps,
			// What the dynamic loader opens for a program or library.
			&loaderPolicy{},
			// Files programs are known to read as they start.
			&startFilesPolicy{maxDir: cfg.dirPrefetch},
		)
		if f.caps.manifests != nil {
			// The image's program, loaded before its container starts.
			ps = append(ps, &entrypointPolicy{
				opener: f.opener, manifests: f.caps.manifests,
				waitMounted: f.waitMounted, noteImage: f.images.noteList, spawn: f.spawn,
			})
		}
	}
	if cfg.background {
		// The rest of the layer, while readers leave the link idle.
		ps = append(ps, &backgroundPolicy{delay: cfg.backgroundDelay, concurrency: cfg.backgroundConcurrency, clock: cfg.clock})
	}
	return ps
}

// spawn runs fn in a goroutine of the FileSystem's, with its lifetime.
func (f *FileSystem) spawn(what string, fn func(ctx context.Context)) bool {
	return f.work.spawn(what, func() { fn(f.life) })
}
