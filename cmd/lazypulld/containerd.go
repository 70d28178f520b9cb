package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// dialContainerd connects to containerd's socket at address.
func dialContainerd(ctx context.Context, address string) (*client.Client, error) {
	if _, err := os.Stat(address); err != nil {
		// Otherwise a missing socket shows as a dial timeout later.
		return nil, fmt.Errorf("containerd socket: %w", err)
	}
	c, err := client.New(address, client.WithTimeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("connect to containerd at %s: %w", address, err)
	}
	return c, nil
}

// purgeNamespace removes chainID, and the committed snapshots above it,
// from containerd's namespace ns if it is a snapshot that failed
// verification and no container or view uses it. ok says that nothing is
// left to do in ns, gone that something was removed.
func (p *purger) purgeNamespace(ctx context.Context, c *client.Client, ns, chainID string) (ok, gone bool, err error) {
	ctx = namespaces.WithNamespace(ctx, ns)
	lg := log.G(ctx).WithFields(log.Fields{"namespace": ns, "snapshot": chainID})
	ss := c.SnapshotService(p.snapshotter)
	info, err := ss.Stat(ctx, chainID)
	if errdefs.IsNotFound(err) {
		return true, false, nil
	}
	if err != nil {
		return false, false, err
	}
	if !isFailed(info) {
		return true, false, nil // a layer containerd applied itself
	}
	children := map[string][]snapshots.Info{}
	if err := ss.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		if i.Parent != "" {
			children[i.Parent] = append(children[i.Parent], i)
		}
		return nil
	}); err != nil {
		return false, false, err
	}
	// Parents before children: removed in reverse.
	var above, used []string
	stack := []string{chainID}
	for len(stack) > 0 {
		name := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, ch := range children[name] {
			if ch.Kind == snapshots.KindCommitted {
				above = append(above, ch.Name)
				stack = append(stack, ch.Name)
			} else {
				used = append(used, ch.Name)
			}
		}
	}
	if len(used) > 0 {
		lg.WithFields(log.Fields{"containers": containersUsing(ctx, c, p.snapshotter, used), "active": used}).
			Error("a snapshot that failed verification is in use; leaving it in containerd until it is not")
		return false, false, nil
	}
	for i := len(above) - 1; i >= 0; i-- {
		if err := purgeDone(ss.Remove(ctx, above[i])); err != nil {
			return false, gone, fmt.Errorf("remove %s: %w", above[i], err)
		}
		gone = true
	}
	if err := purgeDone(ss.Remove(ctx, chainID)); err != nil {
		return false, gone, fmt.Errorf("remove %s: %w", chainID, err)
	}
	lg.WithField("above", len(above)).Warn("removed a snapshot that failed verification from containerd: the next pull of its layer pulls it again")
	return true, true, nil
}

// containersUsing returns the containers whose snapshot is one of keys.
func containersUsing(ctx context.Context, c *client.Client, snapshotter string, keys []string) []string {
	cs, err := c.ContainerService().List(ctx)
	if err != nil {
		return []string{"(cannot list containers: " + err.Error() + ")"}
	}
	var ids []string
	for _, ctr := range cs {
		if ctr.Snapshotter == snapshotter && slices.Contains(keys, ctr.SnapshotKey) {
			ids = append(ids, ctr.ID)
		}
	}
	return ids
}

// collectGarbage has containerd collect garbage now, as deleting a lease
// synchronously does: the snapshots removed from every namespace are then
// removed from the snapshotter.
func collectGarbage(ctx context.Context, c *client.Client, ns string) error {
	ctx = namespaces.WithNamespace(ctx, ns)
	ls := c.LeasesService()
	l, err := ls.Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Minute))
	if err != nil {
		return fmt.Errorf("garbage collection: %w", err)
	}
	if err := ls.Delete(ctx, l, leases.SynchronousDelete); err != nil {
		return fmt.Errorf("garbage collection: %w", err)
	}
	return nil
}
