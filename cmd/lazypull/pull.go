package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	dockerconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/urfave/cli/v2"

	"github.com/lazypull/lazypull/snapshotter"
)

// exitNotLazy is the exit status of pull --require-lazy when a layer was
// not mounted lazily.
const exitNotLazy = 3

func pullCommand() *cli.Command {
	return &cli.Command{
		Name:      "pull",
		Usage:     "pull an image through containerd so that the snapshotter can mount its layers lazily",
		ArgsUsage: "REF",
		Description: `Pulls REF with containerd's client-side pull (the content, images, leases,
snapshots and diff services, which containerd 1.6 and later serve) and unpacks
it into the snapshotter, annotating each layer with the image reference and
layer digests a remote snapshotter needs (containerd.io/snapshot/cri.*); ctr
of containerd 1.6/1.7 does not add them. Registry hosts and mirrors come from
hosts.toml files, credentials from the docker config. Then prints, for each
layer, its chain ID, whether the snapshotter mounted it lazily, or why not,
and whether the layer was verified against the DiffID of the image's
configuration: "containerd" for a layer containerd applied (and checked),
"pending" for a lazily mounted layer not verified yet (lazypulld verifies it
once it is local), "yes", or "failed" with the reason.

While it pulls, it shows on stderr where each layer stands: waiting,
mounted lazily, downloading (with the bytes so far, for a layer containerd
downloads), applying, or pulled. On a terminal the lines of the layers in
flight are redrawn in place; elsewhere a line is printed per change.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "address", Value: "/run/containerd/containerd.sock", Usage: "containerd `SOCKET`"},
			&cli.StringFlag{Name: "namespace", Value: "default", Usage: "containerd `NAMESPACE`"},
			&cli.StringFlag{Name: "snapshotter", Value: "lazypull", Usage: "snapshotter `NAME` (the proxy plugin name in containerd's config)"},
			&cli.StringFlag{Name: "hosts-dir", Value: "/etc/containerd/certs.d", Usage: "`DIR` of hosts.toml files"},
			&cli.BoolFlag{Name: "plain-http", Usage: "use plain HTTP for registries hosts.toml says nothing about"},
			&cli.StringFlag{Name: "platform", Usage: "pull this `PLATFORM` (default: this machine's)"},
			&cli.BoolFlag{Name: "require-lazy", Usage: "exit with status 3 unless every layer was mounted lazily"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "do not show each layer's progress on stderr"},
		},
		Action: pullAction,
	}
}

func pullAction(c *cli.Context) error {
	if err := needArgs(c, 1); err != nil {
		return err
	}
	named, err := reference.ParseDockerRef(c.Args().First())
	if err != nil {
		return cli.Exit(fmt.Sprintf("pull: %v", err), exitUsage)
	}
	ref := named.String()
	matcher := platforms.Default()
	var platformOpts []containerd.RemoteOpt
	if p := c.String("platform"); p != "" {
		spec, err := platforms.Parse(p)
		if err != nil {
			return cli.Exit(fmt.Sprintf("--platform: %v", err), exitUsage)
		}
		matcher = platforms.Only(spec)
		platformOpts = append(platformOpts, containerd.WithPlatformMatcher(matcher))
	}

	client, err := connectContainerd(c.String("address"))
	if err != nil {
		return err
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(c.Context, c.String("namespace"))
	sn := c.String("snapshotter")

	hostOpts := dockerconfig.HostOptions{
		HostDir:     dockerconfig.HostDirFromRoot(c.String("hosts-dir")),
		Credentials: dockerCredentials,
	}
	if c.Bool("plain-http") {
		hostOpts.DefaultScheme = "http"
	}
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: dockerconfig.ConfigureHosts(ctx, hostOpts)})

	fmt.Fprintf(c.App.ErrWriter, "pulling %s into snapshotter %q\n", ref, sn)
	start := time.Now()
	wrapper, stopProgress := followPull(ctx, c.App.ErrWriter, c.Bool("quiet"), client.ContentStore(),
		client.SnapshotService(sn), snapshotters.AppendInfoHandlerWrapper(ref))
	opts := append([]containerd.RemoteOpt{
		containerd.WithResolver(resolver),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(sn),
		containerd.WithImageHandlerWrapper(wrapper),
	}, platformOpts...)
	img, err := client.Pull(ctx, ref, opts...)
	stopProgress()
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	fmt.Fprintf(c.App.ErrWriter, "pulled %s in %s\n", img.Target().Digest, time.Since(start).Round(time.Millisecond))

	man, err := images.Manifest(ctx, client.ContentStore(), img.Target(), matcher)
	if err != nil {
		return fmt.Errorf("read manifest of %s: %w", ref, err)
	}
	diffIDs, err := img.RootFS(ctx)
	if err != nil {
		return fmt.Errorf("read config of %s: %w", ref, err)
	}
	statuses, err := layerStatuses(ctx, client.SnapshotService(sn), man.Layers, diffIDs)
	if err != nil {
		return err
	}
	lazy := printStatuses(c.App.Writer, statuses)
	if c.Bool("require-lazy") && lazy < len(statuses) {
		return cli.Exit(fmt.Sprintf("%d of %d layers were not mounted lazily", len(statuses)-lazy, len(statuses)), exitNotLazy)
	}
	return nil
}

// dockerCredentials looks up credentials for a registry host in the docker
// config (and its credential helpers).
func dockerCredentials(host string) (string, string, error) {
	if host == "registry-1.docker.io" {
		host = name.DefaultRegistry // the docker config knows Docker Hub by this name
	}
	reg, err := name.NewRegistry(host)
	if err != nil {
		return "", "", nil // not a name the docker config could hold
	}
	auth, err := authn.DefaultKeychain.Resolve(reg)
	if err != nil {
		return "", "", fmt.Errorf("credentials for %s: %w", host, err)
	}
	cfg, err := auth.Authorization()
	if err != nil {
		return "", "", fmt.Errorf("credentials for %s: %w", host, err)
	}
	if cfg.IdentityToken != "" {
		// containerd's authorizer takes a secret without a user name for a
		// refresh token.
		return "", cfg.IdentityToken, nil
	}
	return cfg.Username, cfg.Password, nil
}

// layerStatus is how one layer of a pulled image was unpacked.
type layerStatus struct {
	Digest  digest.Digest
	ChainID digest.Digest
	Lazy    bool
	// Verified says whether the layer was checked against its DiffID:
	// "containerd", "pending", "yes", "failed" or "-" (no snapshot).
	Verified string
	Reason   string // why not Lazy, or why it failed verification
}

// statter is the part of snapshots.Snapshotter layerStatuses needs.
type statter interface {
	Stat(ctx context.Context, key string) (snapshots.Info, error)
}

// layerStatuses reads, from the snapshot named by each layer's chain ID,
// whether the layer was mounted lazily, and if not, the likeliest reason.
func layerStatuses(ctx context.Context, sn statter, layers []ocispec.Descriptor, diffIDs []digest.Digest) ([]layerStatus, error) {
	if len(layers) != len(diffIDs) {
		return nil, fmt.Errorf("manifest has %d layers but config has %d diff_ids", len(layers), len(diffIDs))
	}
	chainIDs := identity.ChainIDs(append([]digest.Digest(nil), diffIDs...))
	out := make([]layerStatus, len(layers))
	belowLazy := true
	for i, l := range layers {
		st := layerStatus{Digest: l.Digest, ChainID: chainIDs[i], Verified: "containerd"}
		info, err := sn.Stat(ctx, chainIDs[i].String())
		switch {
		case errdefs.IsNotFound(err):
			st.Reason, st.Verified = "no snapshot with this chain ID in the snapshotter", "-"
		case err != nil:
			return nil, fmt.Errorf("stat snapshot %s of layer %s: %w", chainIDs[i], l.Digest, err)
		case info.Labels[snapshotter.LabelRemote] == "true":
			st.Lazy = true
			v := info.Labels[snapshotter.LabelVerification]
			switch {
			case v == snapshotter.Verified:
				st.Verified = "yes"
			case strings.HasPrefix(v, snapshotter.FailedPrefix):
				st.Verified, st.Reason = "failed", strings.TrimPrefix(v, snapshotter.FailedPrefix)
			default:
				st.Verified = "pending"
			}
		case info.Labels[snapshotter.LabelFallback] != "":
			st.Reason = "fallback: " + info.Labels[snapshotter.LabelFallback]
		case l.Annotations[estargz.TOCJSONDigestAnnotation] == "":
			st.Reason = "not eStargz (no " + estargz.TOCJSONDigestAnnotation + " annotation); convert the image with lazypull convert"
		case !belowLazy:
			st.Reason = "a layer below was not lazy, so containerd downloaded and applied this one"
		default:
			st.Reason = "snapshot carries no lazypull label: it was made before, or by another snapshotter"
		}
		belowLazy = belowLazy && st.Lazy
		out[i] = st
	}
	return out, nil
}

// printStatuses writes a table of statuses and returns how many are lazy.
func printStatuses(w io.Writer, statuses []layerStatus) int {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LAYER\tCHAIN ID\tLAZY\tVERIFIED\tREASON")
	lazy := 0
	for _, s := range statuses {
		yes := "no"
		if s.Lazy {
			yes, lazy = "yes", lazy+1
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Digest, s.ChainID, yes, s.Verified, s.Reason)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "%d of %d layers mounted lazily\n", lazy, len(statuses))
	return lazy
}
