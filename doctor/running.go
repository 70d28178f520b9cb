package doctor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// errStop ends a Walk at its first snapshot.
var errStop = errors.New("stop")

// checkRunningContainerd asks the running containerd what it actually
// runs with: a configuration edited after containerd started is not in
// force until it restarts.
func (r *run) checkRunningContainerd(ctx context.Context, c *containerd.Client) {
	const check = "containerd.running"
	addr := r.opts.ContainerdAddress
	if addr == "" {
		return
	}
	if c == nil {
		fix := "start containerd (systemctl start containerd), or name its socket with --containerd-address"
		if os.Geteuid() != 0 {
			fix = "run doctor as root; " + fix
		}
		r.add(check, Warn, fmt.Sprintf("containerd does not answer on %s: what it runs with was not checked", addr), fix)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	resp, err := c.IntrospectionService().Plugins(ctx)
	if err != nil {
		r.add(check, Warn, fmt.Sprintf("containerd on %s does not list its plugins: %v", addr, err), "")
		return
	}
	var plugins []pluginInfo
	for _, p := range resp.Plugins {
		pi := pluginInfo{typ: p.GetType(), id: p.GetID(), exports: p.GetExports()}
		if e := p.GetInitErr(); e != nil {
			pi.initErr = trimErr(e.GetMessage())
		}
		plugins = append(plugins, pi)
	}
	name, sock := r.opts.Snapshotter, r.opts.Lazypull.Address
	restart := "restart containerd (systemctl restart containerd) so that it reads its configuration again"
	var is issues
	found, initErr, exports := pluginState(plugins, snapshotter, name)
	switch {
	case !found:
		is.add(Fail, fmt.Sprintf("the running containerd has no snapshotter %q: it started before the proxy plugin was configured, or reads another file than %s", name, r.opts.ContainerdConfig), restart)
	case initErr != "":
		is.add(Fail, fmt.Sprintf("the running containerd could not load snapshotter %q: %s", name, initErr), "fix [proxy_plugins."+name+"], then "+restart)
	case exports["address"] != "" && !sameFile(exports["address"], sock):
		is.add(Fail, fmt.Sprintf("the running containerd sends %q's calls to %s, but lazypulld listens on %s", name, exports["address"], sock),
			"set address = "+fmt.Sprintf("%q", sock)+" in [proxy_plugins."+name+"], then "+restart)
	}
	// A plugin that failed to load is how containerd reports a bad CRI or
	// transfer service configuration (an unpack_config naming an unknown
	// snapshotter stops the transfer service).
	for _, p := range []struct{ typ, id string }{{"io.containerd.grpc.v1", "cri"}, {"io.containerd.cri.v1", "images"}, {"io.containerd.transfer.v1", "local"}} {
		if ok, e, _ := pluginState(plugins, p.typ, p.id); ok && e != "" && !r.cfg.disabledSafe(p.typ+"."+p.id) {
			is.add(Fail, fmt.Sprintf("the running containerd could not load %s.%s: %s", p.typ, p.id, e), "fix the configuration, then "+restart)
		}
	}
	if is.status < Fail && found {
		if err := walkOneRetrying(ctx, c, name); err != nil {
			is.add(Fail, fmt.Sprintf("containerd cannot list %q's snapshots: %v", name, err),
				"check that lazypulld serves on "+exports["address"])
		}
	}
	r.finish(check, is, fmt.Sprintf("the running containerd has snapshotter %q on %s", name, orDefault(exports["address"], sock)))
}

// disabledSafe is disabled on a configuration that may not have loaded.
func (c *ctrdConfig) disabledSafe(id string) bool {
	return c != nil && c.disabled(id)
}

// walkOneRetrying is walkOne, again for a few seconds while it fails: a
// containerd whose snapshotter restarted reconnects after a backoff of up
// to 3s (its proxy plugins' gRPC connect parameters). The error that comes
// meanwhile is not always classed unavailable (containerd 2.x passes the
// dial error as unknown), so any error is retried.
func walkOneRetrying(ctx context.Context, c *containerd.Client, name string) error {
	deadline := time.Now().Add(reconnectWait)
	for {
		err := walkOne(ctx, c, name)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// reconnectWait is how long a containerd that cannot reach the snapshotter
// is given to reconnect.
const reconnectWait = 5 * time.Second

// walkOne lists the snapshotter's snapshots through containerd until it
// finds one: containerd asks the snapshotter to Stat each, so an error
// here is containerd failing to reach it. Without snapshots nothing
// reaches the snapshotter; checkDaemon has called it directly then.
func walkOne(ctx context.Context, c *containerd.Client, name string) error {
	nss, err := c.NamespaceService().List(ctx)
	if err != nil {
		return err
	}
	for _, ns := range nss {
		err := c.SnapshotService(name).Walk(namespaces.WithNamespace(ctx, ns), func(context.Context, snapshots.Info) error { return errStop })
		if errors.Is(err, errStop) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("namespace %s: %w", ns, err)
		}
	}
	return nil
}

// pluginState says whether the running containerd has the plugin typ.id,
// its init error ("" when it loaded) and its exports.
func pluginState(plugins []pluginInfo, typ, id string) (found bool, initErr string, exports map[string]string) {
	for _, p := range plugins {
		if p.typ == typ && p.id == id {
			return true, p.initErr, p.exports
		}
	}
	return false, "", nil
}

// pluginInfo is a plugin of the running containerd.
type pluginInfo struct {
	typ, id, initErr string
	exports          map[string]string
}

// trimErr drops the note containerd adds to the error of a plugin it
// skipped.
func trimErr(s string) string {
	return strings.TrimSpace(strings.TrimSuffix(s, ": skip plugin"))
}
