package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/lazypull/lazypull/dataplane"
	"github.com/lazypull/lazypull/fs"
	"github.com/lazypull/lazypull/snapshotter"
)

// verifyingFS is the layer filesystems as a data plane serves them: with
// their verification states in the protocol's terms, for
// /v1/verifications, and their start-up profiles (prof, nil without).
type verifyingFS struct {
	*fs.FileSystem
	prof *profiler
}

// Mount is fs.FileSystem's, with the lookup of the start-up profile of the
// layer's image started first, while the layer's table of contents is
// fetched: the profile's policy replays it on the layers as they mount.
func (v verifyingFS) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	v.prof.mounting(ctx, labels)
	return v.FileSystem.Mount(ctx, mountpoint, labels)
}

var _ dataplane.Verifier = verifyingFS{}

// Verifications is fs.FileSystem's, as dataplane.Verification.
func (v verifyingFS) Verifications(ctx context.Context, since uint64) ([]dataplane.Verification, uint64, error) {
	vs, gen, err := v.FileSystem.Verifications(ctx, since)
	if err != nil {
		return nil, gen, err
	}
	out := make([]dataplane.Verification, len(vs))
	for i, v := range vs {
		out[i] = dataplane.Verification{
			Mountpoint: v.Mountpoint, Layer: v.Layer.String(), ChainID: v.ChainID, State: string(v.State),
			Reason: v.Reason, DiffID: v.DiffID.String(), Mounted: v.Mounted, Decided: v.Decided,
		}
	}
	return out, gen, nil
}

// verdictSource is what the daemon reads of a data plane: the verification
// state of each layer it serves, waiting for the next change (a
// dataplane.Client).
type verdictSource interface {
	Verifications(ctx context.Context, since uint64) ([]dataplane.Verification, uint64, error)
}

// verdictSink is what the daemon tells the snapshotter: the outcome of a
// remote snapshot's verification.
type verdictSink interface {
	SetVerification(ctx context.Context, mountpoint, layer, failure string) error
}

// Bounds of the wait before asking a data plane again after a failed call.
const (
	minVerdictRetry = time.Second
	maxVerdictRetry = 30 * time.Second
)

// watchVerifications passes every verdict on a layer src serves to the
// snapshotter and hands failed snapshots to the purger (if not nil), until
// ctx ends or src says it does not verify layers.
func watchVerifications(ctx context.Context, src verdictSource, sink verdictSink, p *purger) {
	told := map[string]string{} // state, by mountpoint and layer
	var gen uint64
	retry := minVerdictRetry
	for {
		vs, g, err := src.Verifications(ctx, gen)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errdefs.IsNotImplemented(err) {
				log.G(ctx).WithError(err).Info("data plane does not report verification; its layers stay unverified")
				return
			}
			log.G(ctx).WithError(err).WithField("retry_in", retry).Warn("cannot get layer verifications from the data plane")
			if !sleep(ctx, retry) {
				return
			}
			retry = min(2*retry, maxVerdictRetry)
			continue
		}
		if g == gen {
			continue // nothing new within the data plane's bound
		}
		gen = g
		if tell(ctx, vs, told, sink, p) {
			retry = minVerdictRetry
			continue
		}
		// Ask again, for everything, after a while.
		gen = 0
		if !sleep(ctx, retry) {
			return
		}
		retry = min(2*retry, maxVerdictRetry)
	}
}

// sleep waits for d or ctx, and reports whether ctx is still alive.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// tell passes the verdicts among vs that were not told yet to sink, and
// forgets in told the layers vs no longer lists (unmounted). ok is false
// if sink failed to record one.
func tell(ctx context.Context, vs []dataplane.Verification, told map[string]string, sink verdictSink, p *purger) (ok bool) {
	ok = true
	current := make(map[string]bool, len(vs))
	for _, v := range vs {
		key := v.Mountpoint + " " + v.Layer
		current[key] = true
		if told[key] == v.State {
			continue
		}
		failure := ""
		switch v.State {
		case dataplane.VerificationVerified:
		case dataplane.VerificationFailed:
			failure = v.Reason
			if failure == "" {
				failure = "no reason given"
			}
		default:
			continue // pending, or a state of a newer data plane
		}
		if err := sink.SetVerification(ctx, v.Mountpoint, v.Layer, failure); err != nil {
			lg := log.G(ctx).WithError(err).WithFields(log.Fields{"snapshot": v.ChainID, "layer": v.Layer, "mountpoint": v.Mountpoint})
			if errdefs.IsNotFound(err) {
				lg.Debug("no snapshot for a verified layer (removed meanwhile)")
				told[key] = v.State
			} else {
				lg.Warn("failed to record layer verification; trying again")
				ok = false
			}
			continue
		}
		told[key] = v.State
		if failure != "" && p != nil {
			p.add(v.ChainID)
		}
	}
	for key := range told {
		if !current[key] {
			delete(told, key) // unmounted
		}
	}
	return ok
}

// failedSnapshots returns the snapshots of sn that failed verification.
func failedSnapshots(ctx context.Context, sn snapshots.Snapshotter) ([]string, error) {
	var names []string
	filter := "labels." + strconv.Quote(snapshotter.LabelVerification) + "~=" + strconv.Quote("^"+snapshotter.FailedPrefix)
	err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		names = append(names, info.Name)
		return nil
	}, filter)
	return names, err
}

// purgeRetry is how long the purger waits before it tries again to remove
// a snapshot that containers used. After a failure to reach containerd
// (which, when lazypulld has just started, may not have reconnected to it
// yet) it tries again sooner: after purgeRetryMin, doubling up to
// purgeRetry.
const (
	purgeRetry    = time.Minute
	purgeRetryMin = time.Second
)

// purger removes snapshots of layers that failed verification from
// containerd's records, so that the next pull of an image with the layer
// does not find it there (containerd's unpacker skips a layer whose chain
// ID its namespace has, without asking the snapshotter).
type purger struct {
	address, snapshotter string

	mu      sync.Mutex
	pending map[string]bool // chain IDs; bounded by the failed snapshots
	wake    chan struct{}
}

func newPurger(address, snapshotter string) *purger {
	return &purger{address: address, snapshotter: snapshotter, pending: map[string]bool{}, wake: make(chan struct{}, 1)}
}

// add asks for chainID's removal.
func (p *purger) add(chainID string) {
	p.mu.Lock()
	p.pending[chainID] = true
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// run removes what was asked until ctx ends, trying again every purgeRetry
// for what is still in use, sooner for what could not be removed.
func (p *purger) run(ctx context.Context) {
	backoff := purgeRetryMin
	for {
		p.mu.Lock()
		var ids []string
		for id := range p.pending {
			ids = append(ids, id)
		}
		p.mu.Unlock()
		failed := false
		for _, id := range ids {
			done, err := p.purge(ctx, id)
			if err != nil && ctx.Err() == nil {
				failed = true
				log.G(ctx).WithError(err).WithFields(log.Fields{"snapshot": id, "retry_in": backoff}).Warn("failed to remove a snapshot that failed verification from containerd")
			}
			if done {
				p.mu.Lock()
				delete(p.pending, id)
				p.mu.Unlock()
			}
		}
		wait := purgeRetry
		if failed {
			wait, backoff = backoff, min(2*backoff, purgeRetry)
		} else {
			backoff = purgeRetryMin
		}
		if !p.sleep(ctx, wait) {
			return
		}
	}
}

// sleep waits for an add, or for d if removals are pending, or for ctx; it
// reports whether ctx is still alive.
func (p *purger) sleep(ctx context.Context, d time.Duration) bool {
	p.mu.Lock()
	pending := len(p.pending) > 0
	p.mu.Unlock()
	var retry <-chan time.Time
	if pending {
		t := time.NewTimer(d)
		defer t.Stop()
		retry = t.C
	}
	select {
	case <-p.wake:
	case <-retry:
	case <-ctx.Done():
		return false
	}
	return true
}

// purge removes chainID from every namespace of containerd where it names
// a snapshot that failed verification and no container uses it, with the
// snapshots above it, and then has containerd collect garbage, which
// removes it from the snapshotter too. done is false if a namespace still
// has it.
func (p *purger) purge(ctx context.Context, chainID string) (done bool, err error) {
	c, err := dialContainerd(ctx, p.address)
	if err != nil {
		return false, err
	}
	defer c.Close()
	nss, err := c.NamespaceService().List(ctx)
	if err != nil {
		return false, fmt.Errorf("list namespaces: %w", err)
	}
	done = true
	removed := ""
	var errs []error
	for _, ns := range nss {
		ok, gone, err := p.purgeNamespace(ctx, c, ns, chainID)
		if err != nil {
			errs = append(errs, fmt.Errorf("namespace %s: %w", ns, err))
		}
		done = done && ok && err == nil
		if gone {
			removed = ns
		}
	}
	if removed != "" {
		if err := collectGarbage(ctx, c, removed); err != nil {
			errs = append(errs, err)
		}
	}
	return done, errors.Join(errs...)
}

// isFailed reports whether info, as containerd shows it, is a snapshot of
// lazypulld that failed verification rather than a layer containerd
// applied under the same chain ID.
func isFailed(info snapshots.Info) bool {
	return strings.HasPrefix(info.Labels[snapshotter.LabelVerification], snapshotter.FailedPrefix)
}

// purgeDone reports errors of class NotFound as nothing to do.
func purgeDone(err error) error {
	if errdefs.IsNotFound(err) {
		return nil
	}
	return err
}
