// Package dataplane is the protocol between lazypulld, the control plane,
// and its data planes: the processes that serve lazily pulled layers over
// FUSE and outlive the daemon, so that a restart, a crash or an upgrade of
// the daemon leaves running containers' layers served.
//
// A data plane serves the three calls of the snapshotter's FileSystem
// (Mount, Check, Unmount), says what it serves (Mounts), who it is (Info)
// and what its Go runtime holds (Runtime), reports how the check of each
// layer against its DiffID stands (Verifications, a long poll), and stops
// when asked (Shutdown). The Server serves any FileSystem; the Client is
// what the daemon calls it with. The package imports no other package of
// lazypull: cmd/lazypulld wires a Server to fs.FileSystem and the
// snapshotter to Clients.
//
// # Protocol
//
// HTTP/1.1 over a unix socket, JSON bodies, one versioned path per call:
//
//	GET  /v1/info      -> Info
//	GET  /v1/mounts    -> MountList
//	GET  /v1/runtime   -> Runtime (?gc=1: after a garbage collection)
//	POST /v1/mount     MountRequest    -> MountAnswer, or 204 No Content
//	POST /v1/check     MountRequest    -> 204 No Content
//	POST /v1/unmount   UnmountRequest  -> 204 No Content
//	POST /v1/shutdown  ShutdownRequest -> 204 No Content
//	POST /v1/credentials Credentials   -> 204 No Content (CredentialKeeper)
//	GET  /v1/verifications?since=N[&wait=D] -> VerificationList
//	GET  /v1/status    -> StatusList (StatusReporter)
//	GET  /v1/metrics   -> Prometheus text exposition format (WithMetrics)
//
// /v1/verifications is a long poll: the data plane answers once its
// verification state has changed since generation N (at once for N = 0),
// or after D (at most MaxPollWait, the default) with nothing new; the
// caller then asks again with the generation it got. A stopping data
// plane ends the polls it holds with an error of class Unavailable.
//
// so that an operator can ask a data plane by hand:
//
//	curl --unix-socket /var/lib/lazypull/dataplanes/<id>/sock http://dataplane/v1/mounts
//	curl --unix-socket /var/lib/lazypull/dataplanes/<id>/sock http://dataplane/v1/verifications
//	curl --unix-socket /var/lib/lazypull/dataplanes/<id>/sock http://dataplane/v1/status
//
// A failed call is answered with the HTTP status closest to the error's
// errdefs class (404 for not found, 409 for already exists, ...) and an
// Error body that names the class exactly ("not found", "data loss",
// "context canceled", ...); the Client turns it back into an error that
// matches the same errdefs class (errdefs.IsNotFound and the like) and
// carries the data plane's message. A call the data plane does not know is
// answered with the class "not implemented", so that a newer daemon can
// tell an older data plane's missing call from a failure. A Client that
// cannot reach the data plane, or loses the connection during a call,
// returns an error of class Unavailable.
//
// # Compatibility
//
// A daemon talks to data planes started by other builds of lazypulld (an
// upgrade adopts the old build's data plane until its layers are
// removed). Within v1, requests and answers only gain fields, which the
// other side ignores, and new calls are new paths; a change that an older
// peer would misread takes a new version prefix.
//
// # Extending
//
// A call that only some FileSystems can answer is served when the
// FileSystem has the method (the Server checks with a type assertion, as
// it does for io.Closer at Shutdown and for Verifier at
// /v1/verifications) and answered "not implemented" otherwise, as
// /v1/credentials is (the credentials of pulls that the daemon's CRI image
// service pushes, for a CredentialKeeper) and /v1/status is (how much of
// each layer is local, for a StatusReporter): each a path, a request and
// an answer type here, and a method on the Client. /v1/metrics is the
// data plane's Prometheus metrics, written by a handler the Server is
// given (WithMetrics), which the daemon gathers at each scrape. A
// call that waits for an event is a long poll bounded as /v1/verifications
// is, so that Shutdown need not wait for it.
//
// # Concurrency
//
// Calls are served concurrently. The Server serialises nothing but its
// own record of what is mounted: the FileSystem it serves must be safe
// for concurrent use, as fs.FileSystem is.
package dataplane
