package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/urfave/cli/v2"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/dataplane"
)

// statusTimeout bounds each call of status to a data plane.
const statusTimeout = 10 * time.Second

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show, per image and layer, whether it was pulled lazily, how much of it is local and whether it was verified",
		ArgsUsage: "[REF...]",
		Description: `Reads containerd's images (REF..., or every image of the namespace that has
a layer in the snapshotter), the snapshotter's labels of each layer's snapshot
and, from lazypulld's data planes (their sockets under <root>/dataplanes),
what is local of each lazily mounted layer. Prints one row per layer:

  LAZY      yes, or no with the reason in REASON
  LOCAL     for a lazy layer, the compressed bytes of its files that are in
            the chunk cache, of all of them (the background fetch brings the
            rest); for another layer, its size: containerd downloaded it
  FETCHED   bytes lazypull read from the registry for the layer
  VERIFIED  whether the layer was checked against the DiffID of the image's
            configuration: containerd (containerd applied it), pending,
            yes, or failed with the reason

Run it as root, like ctr: the data planes' sockets are root's.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "address", Value: "/run/containerd/containerd.sock", Usage: "containerd `SOCKET`"},
			&cli.StringFlag{Name: "namespace", Value: "default", Usage: "containerd `NAMESPACE`"},
			&cli.StringFlag{Name: "snapshotter", Value: "lazypull", Usage: "snapshotter `NAME` (the proxy plugin name in containerd's config)"},
			&cli.StringFlag{Name: "config", Value: config.DefaultPath, Usage: "lazypulld's configuration `FILE`, for its root"},
			&cli.StringFlag{Name: "root", Usage: "lazypulld's state `DIR`, when it runs with --root (default: from its configuration)"},
			&cli.StringFlag{Name: "platform", Usage: "show this `PLATFORM` of each image (default: this machine's)"},
			&cli.BoolFlag{Name: "json", Usage: "print the images and layers as JSON"},
		},
		Action: statusAction,
	}
}

// imageStatus is an image's row group in status's output.
type imageStatus struct {
	Ref    string             `json:"ref"`
	Digest string             `json:"digest"`
	Layers []layerStatusLocal `json:"layers"`
}

// layerStatusLocal is a layer's row in status's output: how it was
// unpacked, and what the data plane serving it says.
type layerStatusLocal struct {
	Digest  string `json:"digest"`
	ChainID string `json:"chainID"`
	// Size is the layer's compressed size, from the manifest.
	Size int64 `json:"size"`
	Lazy bool  `json:"lazy"`
	// Reason says why the layer is not lazy, or why it failed
	// verification.
	Reason string `json:"reason,omitempty"`
	// Verified is containerd, pending, yes, failed or - (no snapshot).
	Verified string `json:"verified"`
	// LocalBytes and TotalBytes are, for a lazy layer, the compressed bytes
	// of its files in the chunk cache and all of them; FetchedBytes, what
	// the data plane read from the registry for it. Absent for a lazy layer
	// no data plane answered for.
	LocalBytes   *int64     `json:"localBytes,omitempty"`
	TotalBytes   *int64     `json:"totalBytes,omitempty"`
	FetchedBytes *int64     `json:"fetchedBytes,omitempty"`
	FullyLocal   *time.Time `json:"fullyLocal,omitempty"`
	// DataPlane is the data plane serving a lazy layer (its directory's
	// name under <root>/dataplanes).
	DataPlane string `json:"dataPlane,omitempty"`
}

func statusAction(c *cli.Context) error {
	root, err := lazypulldRoot(c)
	if err != nil {
		return err
	}
	matcher := platforms.Default()
	if p := c.String("platform"); p != "" {
		spec, err := platforms.Parse(p)
		if err != nil {
			return cli.Exit(fmt.Sprintf("--platform: %v", err), exitUsage)
		}
		matcher = platforms.Only(spec)
	}
	client, err := connectContainerd(c.String("address"))
	if err != nil {
		return err
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(c.Context, c.String("namespace"))
	imgs, err := statusImages(ctx, client, c.Args().Slice())
	if err != nil {
		return err
	}
	planes := planeStatuses(ctx, root, c.App.ErrWriter)
	sn := client.SnapshotService(c.String("snapshotter"))
	var out []imageStatus
	for _, img := range imgs {
		st, err := statusOf(ctx, client, sn, img, matcher, planes)
		if err != nil {
			if c.NArg() > 0 {
				return err
			}
			log.G(ctx).WithError(err).WithField("image", img.Name).Debug("image left out")
			continue
		}
		if c.NArg() == 0 && !anyUnpacked(st.Layers) {
			continue // not in this snapshotter
		}
		out = append(out, st)
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	printImageStatuses(c.App.Writer, out)
	return nil
}

// lazypulldRoot is lazypulld's root: --root, else its configuration's.
func lazypulldRoot(c *cli.Context) (string, error) {
	if c.IsSet("root") {
		return c.String("root"), nil
	}
	cfg, err := config.Load(c.String("config"))
	switch {
	case errors.Is(err, fs.ErrNotExist) && !c.IsSet("config"):
		return config.DefaultRoot, nil
	case err != nil:
		return "", err
	}
	return cfg.Root, nil
}

// connectContainerd connects to containerd at address.
func connectContainerd(address string) (*containerd.Client, error) {
	if !strings.Contains(address, "://") {
		// Otherwise a missing socket shows as a dial timeout 10s later.
		if _, err := os.Stat(address); err != nil {
			return nil, fmt.Errorf("containerd socket: %w", err)
		}
	}
	client, err := containerd.New(address)
	if err != nil {
		return nil, fmt.Errorf("connect to containerd: %w", err)
	}
	return client, nil
}

// statusImages returns the images named refs, or all of them.
func statusImages(ctx context.Context, client *containerd.Client, refs []string) ([]images.Image, error) {
	if len(refs) == 0 {
		return client.ImageService().List(ctx)
	}
	out := make([]images.Image, 0, len(refs))
	for _, ref := range refs {
		img, err := client.ImageService().Get(ctx, ref)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", ref, err)
		}
		out = append(out, img)
	}
	return out, nil
}

// planeLayer is a layer a data plane serves.
type planeLayer struct {
	plane string
	dataplane.LayerStatus
}

// planeStatuses asks every data plane under root what it serves, by chain
// ID; a data plane that does not answer is reported on w.
func planeStatuses(ctx context.Context, root string, w io.Writer) map[string]planeLayer {
	socks, _ := filepath.Glob(filepath.Join(root, "dataplanes", "*", "sock"))
	out := map[string]planeLayer{}
	for _, sock := range socks {
		id := filepath.Base(filepath.Dir(sock))
		cl := dataplane.NewClient(sock)
		cctx, cancel := context.WithTimeout(ctx, statusTimeout)
		ls, err := cl.Status(cctx)
		cancel()
		cl.Close()
		if err != nil {
			fmt.Fprintf(w, "lazypull: data plane %s: %v\n", id, err)
			continue
		}
		for _, l := range ls {
			if l.ChainID != "" {
				out[l.ChainID] = planeLayer{plane: id, LayerStatus: l}
			}
		}
	}
	return out
}

// statusOf is img's status: how each layer was unpacked into sn, and what
// the data plane serving it says.
func statusOf(ctx context.Context, client *containerd.Client, sn statter, img images.Image, matcher platforms.MatchComparer, planes map[string]planeLayer) (imageStatus, error) {
	st := imageStatus{Ref: img.Name, Digest: img.Target.Digest.String()}
	cs := client.ContentStore()
	man, err := images.Manifest(ctx, cs, img.Target, matcher)
	if err != nil {
		return st, fmt.Errorf("manifest of %s: %w", img.Name, err)
	}
	diffIDs, err := images.RootFS(ctx, cs, man.Config)
	if err != nil {
		return st, fmt.Errorf("config of %s: %w", img.Name, err)
	}
	layers, err := layerStatuses(ctx, sn, man.Layers, diffIDs)
	if err != nil {
		return st, err
	}
	for i, l := range layers {
		row := layerStatusLocal{
			Digest: l.Digest.String(), ChainID: l.ChainID.String(), Size: man.Layers[i].Size,
			Lazy: l.Lazy, Reason: l.Reason, Verified: l.Verified,
		}
		if p, ok := planes[row.ChainID]; ok && l.Lazy {
			row.DataPlane = p.plane
			row.LocalBytes, row.TotalBytes, row.FetchedBytes = &p.LocalBytes, &p.TotalBytes, &p.FetchedBytes
			if !p.FullyLocal.IsZero() {
				row.FullyLocal = &p.FullyLocal
			}
			if v := p.Verification; v != nil && row.Verified == "pending" {
				// The data plane may know a verdict the label does not
				// carry yet.
				switch v.State {
				case dataplane.VerificationVerified:
					row.Verified = "yes"
				case dataplane.VerificationFailed:
					row.Verified, row.Reason = "failed", v.Reason
				}
			}
		}
		st.Layers = append(st.Layers, row)
	}
	return st, nil
}

// anyUnpacked reports whether some layer has a snapshot.
func anyUnpacked(ls []layerStatusLocal) bool {
	for _, l := range ls {
		if l.Verified != "-" {
			return true
		}
	}
	return false
}

// printImageStatuses writes the table of status.
func printImageStatuses(w io.Writer, imgs []imageStatus) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tLAYER\tLAZY\tLOCAL\tFETCHED\tVERIFIED\tREASON")
	for _, img := range imgs {
		ref := img.Ref
		for _, l := range img.Layers {
			lazy, local, fetched := "no", human(l.Size), "-"
			switch {
			case l.Lazy && l.TotalBytes != nil:
				lazy, local, fetched = "yes", localOf(*l.LocalBytes, *l.TotalBytes), human(*l.FetchedBytes)
			case l.Lazy:
				lazy, local = "yes", "?"
			case l.Verified == "-":
				local = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ref, short(l.Digest), lazy, local, fetched, l.Verified, l.Reason)
			ref = ""
		}
	}
	_ = tw.Flush()
}

// localOf says how much of a lazy layer is local, e.g. "1.2 MiB/4.0 MiB (30%)".
func localOf(local, total int64) string {
	pct := 100
	if total > 0 {
		pct = int(local * 100 / total)
	}
	return fmt.Sprintf("%s/%s (%d%%)", human(local), human(total), pct)
}
