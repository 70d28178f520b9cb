package fs

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	digest "github.com/opencontainers/go-digest"
)

// Labels of a layer snapshot that say which DiffID the layer must have.
const (
	// LabelChainID is the chain ID of the snapshot the layer is mounted for.
	LabelChainID = "containerd.io/snapshot.ref"
	// LabelParentChainID is the chain ID of the layer below; absent for a
	// layer without a parent.
	LabelParentChainID = "containerd.io/snapshot/parent-chain-id"
	// LabelDiffID is the DiffID the image's configuration gives the layer
	// (containerd 2.3+). Only messages use it: the chain IDs decide.
	LabelDiffID = "containerd.io/snapshot/diff-id"
)

// VerifyMode says when a mounted layer is checked against its DiffID.
type VerifyMode int

const (
	// VerifyOff checks nothing.
	VerifyOff VerifyMode = iota
	// VerifyBackground checks a layer once its bytes are local: after its
	// background fetch or, without one, by fetching what it lacks as the
	// background fetch would.
	VerifyBackground
	// VerifyBeforeMount fetches a layer whole, at full speed, and checks it
	// before Mount returns; a layer that fails is not mounted.
	VerifyBeforeMount
)

// VerificationState is where a mounted layer's verification stands.
type VerificationState string

// States of a mounted layer's verification.
const (
	VerificationPending  VerificationState = "pending"
	VerificationVerified VerificationState = "verified"
	VerificationFailed   VerificationState = "failed"
)

// Verification is the state of a mounted layer's verification.
type Verification struct {
	Mountpoint string
	Layer      digest.Digest
	// ChainID is the chain ID the layer was mounted for (LabelChainID).
	ChainID string
	State   VerificationState
	// Reason says why the layer failed.
	Reason string
	// DiffID is the digest of the layer's tar, once known.
	DiffID digest.Digest
	// Mounted is when the layer was mounted; Decided, when its state
	// became verified or failed.
	Mounted, Decided time.Time
}

// Verifications returns the verification state of every mounted layer (none
// with VerifyOff) and a generation number, once the generation is past
// since: a caller that passes the number it got last waits for the next
// verdict, or for ctx.
func (f *FileSystem) Verifications(ctx context.Context, since uint64) ([]Verification, uint64, error) {
	for {
		f.mu.Lock()
		gen, changed := f.verifyGen, f.verifyChanged
		if gen > since {
			var out []Verification
			for mp, m := range f.mounts {
				if m.server != nil && f.cfg.verify != VerifyOff {
					out = append(out, m.layer.verification(mp))
				}
			}
			f.mu.Unlock()
			sort.Slice(out, func(i, j int) bool { return out[i].Mountpoint < out[j].Mountpoint })
			return out, gen, nil
		}
		f.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, since, ctx.Err()
		}
	}
}

// verificationChanged moves the generation of Verifications on.
func (f *FileSystem) verificationChanged() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.verificationChangedLocked()
}

func (f *FileSystem) verificationChangedLocked() {
	f.verifyGen++
	close(f.verifyChanged)
	f.verifyChanged = make(chan struct{})
}

func (l *layer) verification(mountpoint string) Verification {
	v := Verification{Mountpoint: mountpoint, Layer: l.src.dgst, ChainID: l.expect.chainID, State: VerificationPending, Mounted: l.mounted}
	if d := l.verdict.Load(); d != nil {
		v.State, v.DiffID, v.Decided = VerificationVerified, d.diffID, d.at
		if d.failure != "" {
			v.State, v.Reason = VerificationFailed, d.failure
		}
	}
	return v
}

// expectation is what a layer's labels say of its DiffID.
type expectation struct{ chainID, parent, diffID string }

func expectationOf(labels map[string]string) expectation {
	return expectation{labels[LabelChainID], labels[LabelParentChainID], labels[LabelDiffID]}
}

// check returns why a layer whose tar has digest d cannot be the layer of
// the chain ID expected, or "" if it is (or no chain ID is expected).
func (x expectation) check(d digest.Digest) string {
	if x.chainID == "" {
		return ""
	}
	got := d
	if x.parent != "" {
		got = digest.FromString(x.parent + " " + d.String())
	}
	if got.String() == x.chainID {
		return ""
	}
	msg := fmt.Sprintf("the layer's DiffID is %s, which gives chain ID %s", d, got)
	if x.parent != "" {
		msg += " on parent chain ID " + x.parent
	}
	msg += ", not the snapshot's " + x.chainID
	if x.diffID != "" && x.diffID != d.String() {
		msg += " (the image's configuration says DiffID " + x.diffID + ")"
	}
	return msg
}

// verdict is a mounted layer's verification outcome.
type verdict struct {
	diffID  digest.Digest
	failure string // "" if verified
	at      time.Time
}

// failed reports whether the layer failed verification: its reads fail.
func (l *layer) failed() bool {
	v := l.verdict.Load()
	return v != nil && v.failure != ""
}

// blobResult is what verification found of a blob, whoever mounts it.
type blobResult struct {
	// DiffID is the digest of the blob's tar; empty if Failure is set.
	DiffID digest.Digest `json:"diffID,omitempty"`
	// Failure says why the blob's tar is not what its TOC serves.
	Failure string `json:"failure,omitempty"`
}

// judge applies what verification found of the layer's blob to the layer:
// a failure makes its reads fail from now on.
func (l *layer) judge(ctx context.Context, res *blobResult) {
	failure := res.Failure
	if failure == "" {
		failure = l.expect.check(res.DiffID)
	}
	if !l.verdict.CompareAndSwap(nil, &verdict{diffID: res.DiffID, failure: failure, at: time.Now()}) {
		return
	}
	l.fsys.stats.countVerdict(failure == "")
	lg := log.G(ctx).WithFields(log.Fields{"layer": l.src.dgst, "snapshot": l.expect.chainID, "diff_id": res.DiffID})
	if failure != "" {
		lg.WithFields(log.Fields{"parent_chain_id": l.expect.parent, "config_diff_id": l.expect.diffID, "reason": failure}).
			Error("layer failed verification: its reads fail from now on")
		l.invalidate()
	} else {
		lg.WithField("since_mount", time.Since(l.mounted)).Info("layer verified")
	}
	l.fsys.verificationChanged()
}

// invalidate drops what the kernel caches of the content of the files it
// knows of the layer, so that their reads come to the FileSystem, which
// fails them.
func (l *layer) invalidate() {
	root := l.root.Load()
	if root == nil {
		return
	}
	seen := map[*gofs.Inode]bool{}
	var walk func(*gofs.Inode)
	walk = func(n *gofs.Inode) {
		for _, c := range n.Children() {
			if seen[c] {
				continue
			}
			seen[c] = true
			if c.IsDir() {
				walk(c)
			} else {
				c.NotifyContent(0, 0)
			}
		}
	}
	walk(root.EmbeddedInode())
}

// blobCheck is the verification work on one blob, shared by its mounts.
type blobCheck struct {
	spool    *spool // nil if not spooled
	reserved int64  // of the FileSystem's spool budget

	mu      sync.Mutex
	running chan struct{} // closed when the running verification ends
	dropped bool
}

// attachVerification prepares the verification of a layer being mounted
// with labels. A layer whose blob was verified before is judged at once;
// with VerifyBeforeMount, the blob is verified now. An error means the
// layer is not to be mounted: it failed, or could not be verified before
// mounting.
func (f *FileSystem) attachVerification(ctx context.Context, l *layer, labels map[string]string) error {
	l.expect = expectationOf(labels)
	l.mounted = time.Now()
	if f.cfg.verify == VerifyOff {
		return nil
	}
	res := f.loadResult(l.src.dgst)
	if res == nil {
		f.ensureCheck(l.src)
		if f.cfg.verify != VerifyBeforeMount {
			return nil
		}
		var err error
		if res, err = f.verifySource(ctx, l, true); err != nil {
			return fmt.Errorf("layer %s: verification before mounting: %w", l.src.dgst, err)
		}
		f.publish(ctx, l.src, res)
	}
	l.judge(ctx, res)
	if v := l.verdict.Load(); v.failure != "" {
		return fmt.Errorf("layer %s failed verification: %s: %w", l.src.dgst, v.failure, errdefs.ErrDataLoss)
	}
	return nil
}

// ensureCheck sets up src's verification, with a spool if the budget has
// room for its blob.
func (f *FileSystem) ensureCheck(src *source) {
	if src.check.Load() != nil {
		return
	}
	c := &blobCheck{}
	if size := src.blob.Size(); f.spoolBudget.reserve(size) {
		sp, err := openSpool(f.spoolDir, src.dgst, size)
		if err != nil {
			log.G(f.life).WithError(err).WithField("layer", src.dgst).Warn("no spool for the layer: its verification will fetch it whole")
			f.spoolBudget.release(size)
		} else {
			c.spool, c.reserved = sp, size
		}
	}
	if !src.check.CompareAndSwap(nil, c) {
		f.dropSpool(c)
	}
}

// dropSpool deletes c's spool, if any, and returns its reservation.
func (f *FileSystem) dropSpool(c *blobCheck) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dropped {
		return
	}
	c.dropped = true
	if c.spool != nil {
		if err := c.spool.remove(); err != nil {
			log.G(f.life).WithError(err).WithField("spool", c.spool.path).Warn("failed to remove spool")
		}
		f.spoolBudget.release(c.reserved)
	}
}

// verifyLater verifies the layer's blob in the background, retrying until
// it is known or the layer stops, and judges the layer and every other
// mount of the blob.
func (l *layer) verifyLater(lg *log.Entry) {
	f := l.fsys
	if f.cfg.verify != VerifyBackground || l.verdict.Load() != nil || l.src.check.Load() == nil {
		return
	}
	ctx := log.WithLogger(l.ctx, lg)
	wait := f.cfg.verifyRetry
	for l.ctx.Err() == nil {
		res, err := f.verifySource(ctx, l, false)
		if err == nil {
			f.publish(ctx, l.src, res)
			l.judge(ctx, res) // in case it was not registered yet
			return
		}
		if l.ctx.Err() != nil {
			return
		}
		lg.WithError(err).WithField("retry_in", wait).Warn("layer verification did not finish; trying again later")
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-l.ctx.Done():
			t.Stop()
			return
		}
		wait = min(2*wait, maxVerifyRetry)
	}
}

// publish judges every mount of src with res.
func (f *FileSystem) publish(ctx context.Context, src *source, res *blobResult) {
	f.mu.Lock()
	var ls []*layer
	for _, m := range f.mounts {
		if m.layer != nil && m.layer.src == src {
			ls = append(ls, m.layer)
		}
	}
	f.mu.Unlock()
	for _, l := range ls {
		l.judge(ctx, res)
	}
}

// verifySource returns what verification finds of l's blob: the result
// kept from earlier, or that of a verification it runs, or waits for if
// another mount of the blob runs one. An error means nothing is known yet.
func (f *FileSystem) verifySource(ctx context.Context, l *layer, strict bool) (*blobResult, error) {
	c := l.src.check.Load()
	for {
		if res := f.loadResult(l.src.dgst); res != nil {
			return res, nil
		}
		c.mu.Lock()
		if ch := c.running; ch != nil {
			c.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		ch := make(chan struct{})
		c.running = ch
		c.mu.Unlock()
		res, err := f.runVerification(ctx, l, c, strict)
		c.mu.Lock()
		c.running = nil
		close(ch)
		c.mu.Unlock()
		return res, err
	}
}

// runVerification verifies l's blob, at most verifyConcurrency at once on
// the FileSystem, keeps the result and deletes the spool.
func (f *FileSystem) runVerification(ctx context.Context, l *layer, c *blobCheck, strict bool) (*blobResult, error) {
	select {
	case f.verifySem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-f.verifySem }()
	started := time.Now()
	res, st, err := l.verifyBlob(ctx, c.spool, strict)
	lg := log.G(ctx).WithFields(log.Fields{
		"layer": l.src.dgst, "duration": time.Since(started), "from_spool": st.spooled, "fetched": st.fetched,
	})
	if err != nil {
		if errors.Is(err, errBadBytes) && c.spool != nil {
			c.spool.reset()
		}
		return nil, err
	}
	if err := f.saveResult(l.src.dgst, res); err != nil {
		lg.WithError(err).Warn("failed to keep the layer's verification result")
	}
	if hook := f.cfg.verifiedBlob; hook != nil && c.spool != nil && res.Failure == "" {
		hook(l.src.dgst, c.spool.path)
	}
	f.dropSpool(c)
	lg.WithFields(log.Fields{"diff_id": res.DiffID, "failure": res.Failure}).Debug("layer blob checked")
	return res, nil
}
