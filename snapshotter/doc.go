// Package snapshotter is lazypull's containerd snapshotter: an overlayfs
// snapshotter (containerd's snapshots.Snapshotter, served to containerd over
// its snapshots gRPC API by the daemon) whose committed layers may be remote
// layers, mounted read-only by a FileSystem instead of being downloaded and
// applied by containerd.
//
// # Local snapshots
//
// Every snapshot has a numeric id from the metadata store
// (containerd's core/snapshots/storage, a bolt file under the root) and a
// directory <root>/snapshots/<id> holding "fs" (the layer's files, the
// overlay upperdir of an active snapshot) and "work" (the overlay workdir).
// A snapshot without parents is mounted as a bind mount (read-only for a
// view); otherwise as overlayfs with the parents' "fs" directories as
// lowerdirs, nearest parent first. A view of a single parent is a read-only
// bind mount of that parent. Removed snapshots' directories are deleted at
// once; Cleanup deletes directories no snapshot refers to.
//
// # Remote snapshots
//
// The remote-snapshot protocol is containerd's (core/unpack and
// core/metadata): to unpack layer N of an image, containerd calls
//
//	Prepare(ctx, "extract-<random> <chainID>", <parent chainID>, WithLabels(labels))
//
// where labels carry LabelSnapshotRef ("containerd.io/snapshot.ref") set to
// the target chainID and the layer's "containerd.io/snapshot/*" annotations.
// When the snapshotter has a FileSystem (WithFileSystem) and the labels also
// carry the image reference and layer digest annotations
// (snapshotters.TargetRefLabel, snapshotters.TargetLayerDigestLabel), Prepare:
//
//  1. returns an error wrapping errdefs.ErrAlreadyExists if a committed
//     snapshot named <chainID> with the same parent and ref label exists
//     and is bound to the request: a remote snapshot whose layer was
//     verified (see below) serves any request of its chain ID; one that
//     failed verification, none; one not verified yet, only a request of
//     the layer digest and TOC digest it was mounted from;
//  2. otherwise creates the active snapshot, asks FileSystem.Mount to serve
//     the layer read-only at the snapshot's "fs" directory, commits the
//     snapshot under the name <chainID> with the requested parent, keeps all
//     Prepare labels (LabelSnapshotRef included) and adds LabelRemote=true,
//     and returns an error wrapping errdefs.ErrAlreadyExists. containerd then
//     finds the snapshot with
//     Walk(fn, `labels."containerd.io/snapshot.ref"==<chainID>,parent==<parent>`)
//     and skips downloading and applying the layer.
//
// If the layer cannot be served lazily (Mount fails, the annotations are
// missing, or <chainID> exists with another parent or is not bound to the
// request), Prepare falls back: it
// returns the ordinary mounts of the active snapshot so that containerd
// applies the layer itself, logs why, and labels the active snapshot with
// LabelFallback=<reason>. Commit carries that label over to the committed
// snapshot, so `ctr snapshots info <chainID>` tells an operator why a layer
// was not lazy. With WithFallbackError, Prepare does not fall back: it
// fails with an error of class FailedPrecondition that names the layer and
// the reason, and leaves no snapshot, so that the pull fails. An Observer
// (WithObserver) is told of each layer mounted lazily and of each that was
// not, with a class of the reason (the Fallback constants).
//
// A remote snapshot's "fs" directory is its mountpoint, so the mounts of any
// snapshot above it name the mountpoint as a lowerdir. The labels a layer was
// mounted with are kept in <root>/snapshots/<id>/remote.json, which marks the
// snapshot as remote independently of later label updates. Remote layers are
// unmounted by Remove, by Cleanup (for directories no snapshot refers to)
// and by Close (unless WithKeepMountsOnClose). When New opens an existing
// root, it re-mounts in the background, with bounded parallelism, every remote
// layer whose mount is gone or fails FileSystem.Check; Remount does the same,
// while the snapshotter runs, for layers its FileSystem reports lost. A
// mount that was there but not served is detached first (containers using
// it keep their errors; new ones get the new mount) and the snapshot is
// labelled LabelRemounted. Until that attempt ends, Mounts, Prepare and View
// of snapshots above the layer wait for it; if it failed, they return an
// error wrapping errdefs.ErrUnavailable that names the layer.
//
// # Verification
//
// containerd names a layer's snapshot by the chain ID it computes from the
// DiffIDs of the image's config, and checks a layer it applies against its
// DiffID; it cannot check a layer it did not apply. Labels of this package
// that a Prepare or Commit is given (from image annotations) are dropped.
// A remote layer is mounted with the chain ID of its parent snapshot
// ("containerd.io/snapshot/parent-chain-id", replacing any such label of
// the Prepare) beside its own (LabelSnapshotRef), which tell the
// FileSystem which DiffID the layer must have. Whoever verifies the layer
// reports the outcome with SetVerification, which is kept in
// <root>/snapshots/<id>/verification.json and shown as LabelVerification.
// A re-mount (when New opens a root, or by Remount) mounts the layer with
// the labels of its first mount, the parent's chain ID included, and leaves
// the recorded outcome as it is: a verdict outlives the mount, the process
// that made it and the snapshotter's restarts.
//
// A remote snapshot is bound to its parent, so the snapshotter does not
// offer containerd's "rebase" capability (parallel unpack, which prepares
// every layer without a parent). A remote snapshot reports, as its usage,
// what the filesystem mounted for its layer held at commit (statfs): for
// lazypull's layers the uncompressed size of the files and the number of
// entries, which is what the layer takes in the chunk cache once fully
// fetched and what containerd, the CRI (image filesystem usage) and Docker
// (image sizes) would count for the layer pulled normally.
//
// Errors carry their errdefs class where they arise; the gRPC service maps
// the classes to status codes and containerd's proxy maps them back.
package snapshotter

import "context"

// Labels set by this package. All are "containerd.io/snapshot/" labels, so
// containerd copies them into its own metadata and shows them with the
// snapshot's info.
const (
	// LabelRemote is "true" on a committed snapshot whose layer is served
	// by the FileSystem rather than stored locally.
	LabelRemote = "containerd.io/snapshot/lazypull.remote"
	// LabelFallback holds the reason a layer that was offered for lazy
	// pulling was not served lazily. It is set on the active snapshot
	// Prepare returned mounts for and carried over to the snapshot Commit
	// creates from it.
	LabelFallback = "containerd.io/snapshot/lazypull.fallback"
	// LabelRemounted is set on a remote snapshot whose layer had a mount
	// that was no longer served (the process serving it died) and was
	// mounted again in its place. Its value is the time (RFC 3339) and the
	// reason. Containers that used the lost mount saw I/O errors; those
	// created since read from the new one.
	LabelRemounted = "containerd.io/snapshot/lazypull.remounted"
	// LabelVerification is set on a remote snapshot once its layer was
	// checked against the DiffID its chain ID implies: Verified, or
	// FailedPrefix and the reason. Until then it is absent.
	LabelVerification = "containerd.io/snapshot/lazypull.verification"
)

// Remounter is implemented by the snapshotters New returns: the owner of a
// FileSystem that lost layers (the process serving them died) calls Remount
// with their mountpoints. See the package doc.
type Remounter interface {
	Remount(mountpoints []string, reason string)
}

// FileSystem mounts remote layers: it serves a layer's content at a
// mountpoint without the layer being unpacked there. It is implemented
// outside this package (lazypull's fs, or a data plane's client of it), and
// the snapshotter is its only caller.
//
// # Vocabulary
//
// A mountpoint is the directory of an active snapshot that the snapshotter
// created, empty, before calling Mount; it is named by the snapshot's ID
// and stays the same for the life of the snapshot, across restarts of the
// snapshotter and of the FileSystem. The labels are the snapshot's
// containerd.io/snapshot/* labels of the Prepare that asked for the layer
// (the image reference, the layer and TOC digests, the image's layers): the
// same map, as stored, is passed again to Check, and to Mount when a layer
// is mounted again after a restart.
//
// # Lifecycle
//
// A mountpoint is mounted once (Mount), checked any number of times
// (Check), and unmounted once when its snapshot is removed (Unmount). After
// a restart the snapshotter asks Check of every remote snapshot it finds
// mounted, Unmounts and Mounts again those that fail it, and Mounts those
// that are not mounted at all; a mountpoint whose serving process died may
// be Mounted again without an Unmount (see Remounter).
//
// # Errors
//
// Errors carry an errdefs class, given where they arise; the snapshotter
// passes them through gRPC unchanged or turns them into its own:
//
//   - Mount: any error means the layer cannot be served lazily, and the
//     snapshotter falls back to unpacking it; the message is the reason
//     (recorded on the snapshot as LabelFallback), so it names what was
//     wrong (label, layer digest, registry answer). InvalidArgument: labels
//     missing or malformed; FailedPrecondition: the layer has no usable
//     TOC digest; NotImplemented: the blob is not in a format the
//     FileSystem serves; DataLoss: the blob does not match its digests;
//     AlreadyExists: the mountpoint is mounted already; Unavailable: the
//     FileSystem is closing, or the registry is out of reach; otherwise the
//     class of the registry's error. Nothing is left mounted at mountpoint
//     after an error.
//   - Check: nil means the layer the labels name is served at mountpoint
//     now. NotFound: the FileSystem serves nothing there (it restarted, or
//     never mounted it); FailedPrecondition: it serves another layer there;
//     Unavailable: it holds the mount but cannot serve it (the serving
//     process died). The snapshotter treats every error alike: the layer
//     is not served, containers using it fail their reads, and it mounts
//     the layer again.
//   - Unmount: NotFound: the FileSystem serves nothing at mountpoint (the
//     snapshotter then clears any mount left there itself). After any other
//     error the layer stays mounted and Unmount may be retried.
//
// # Idempotence
//
// Mount is not idempotent: a second Mount of a mountpoint the FileSystem
// serves fails with AlreadyExists and leaves the first mount alone. Check
// has no effect and may be repeated. Unmount of a mountpoint that was
// unmounted already returns NotFound, which the snapshotter takes as done.
//
// # Concurrency
//
// All methods may be called concurrently, for different mountpoints and
// for the same one; calls for one mountpoint are ordered by the snapshotter
// (a Mount returns before the Check or Unmount of that mountpoint starts)
// except that Check may run concurrently with other Checks. A Mount may
// take as long as resolving the layer takes (registry round trips); ctx
// bounds it, and a Mount whose ctx ends returns its error with nothing
// mounted.
//
// # What Check may assume
//
// Check is called only for mountpoints that a Mount, of this FileSystem or
// of one that ran before on the same root, returned nil for, with the
// labels of that Mount. It must be cheap (the snapshotter calls it for
// every remote layer of a container being started, on every Mounts of it):
// it may look at the FileSystem's own state and statfs the mountpoint, but
// not reach the registry.
type FileSystem interface {
	// Mount makes the layer described by labels available read-only at
	// mountpoint, an existing empty directory.
	Mount(ctx context.Context, mountpoint string, labels map[string]string) error
	// Check reports whether the layer the labels name is still served at
	// mountpoint.
	Check(ctx context.Context, mountpoint string, labels map[string]string) error
	// Unmount unmounts the layer at mountpoint.
	Unmount(ctx context.Context, mountpoint string) error
}
