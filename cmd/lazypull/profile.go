package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	iofs "io/fs"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/distribution/reference"
	"github.com/urfave/cli/v2"

	"github.com/lazypull/lazypull/config"
	"github.com/lazypull/lazypull/profile"
	"github.com/lazypull/lazypull/remote"
)

func profileCommand() *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "config", Value: config.DefaultPath, Usage: "lazypulld's configuration `FILE` (its root, hosts directory and [profile] limits)"},
		&cli.StringFlag{Name: "root", Usage: "lazypulld's state `DIR`, when it runs with --root (default: from its configuration)"},
	}
	return &cli.Command{
		Name:  "profile",
		Usage: "list, show and publish the start-up profiles lazypulld recorded on this node",
		Description: `lazypulld records which chunks of its layers a container of an image read
within its first seconds ([profile] record), keeps that profile under
<root>/profiles and prefetches those chunks at the image's next cold start.
push publishes a profile this node recorded as an OCI referrer of the image's
manifest in its registry, where lazypulld on other nodes finds it
([profile] fetch) and starts the image as if it had been optimized.`,
		Subcommands: []*cli.Command{
			{
				Name:      "list",
				Usage:     "list the profiles kept on this node",
				Flags:     flags,
				Action:    profileList,
				ArgsUsage: " ",
			},
			{
				Name:      "show",
				Usage:     "print the profiles of an image (by reference, or by the key list shows) as JSON",
				ArgsUsage: "IMAGE|KEY",
				Flags:     flags,
				Action:    profileShow,
			},
			{
				Name:      "push",
				Usage:     "publish the profiles this node recorded for an image to the image's registry",
				ArgsUsage: "IMAGE",
				Description: `Publishes each profile recorded for IMAGE (the reference it was pulled as; one
per platform pulled) as an artifact of type ` + profile.ArtifactType + `
whose subject is the image manifest, in IMAGE's repository. Registries
without the referrers API get the referrers tag sha256-<hex> too.
Registry hosts, TLS and plain HTTP come from the hosts directory (as for
lazypulld), credentials from the docker config. Prints the artifact
manifests' digests.`,
				Flags: append(flags,
					&cli.StringFlag{Name: "hosts-dir", Usage: "hosts.toml `DIR` (default: lazypulld's [remote] hosts_dir)"},
					&cli.DurationFlag{Name: "timeout", Value: time.Minute, Usage: "bound on the push"},
				),
				Action: profilePush,
			},
		},
	}
}

// profileSettings is lazypulld's configuration as it would load it, with
// --root on top.
func profileSettings(c *cli.Context) (*config.Config, error) {
	cfg, err := config.Load(c.String("config"))
	switch {
	case errors.Is(err, iofs.ErrNotExist) && !c.IsSet("config"):
		cfg = config.Default()
	case err != nil:
		return nil, err
	}
	if c.IsSet("root") {
		cfg.Root = c.String("root")
	}
	return cfg, nil
}

func profileStore(c *cli.Context) (*profile.Store, *config.Config, error) {
	cfg, err := profileSettings(c)
	if err != nil {
		return nil, nil, err
	}
	lim := profile.Limits{Size: cfg.Profile.MaxSize.Int64(), Entries: cfg.Profile.MaxEntries}
	s, err := profile.OpenStore(filepath.Join(cfg.Root, "profiles"), lim, cfg.Profile.MaxProfiles)
	return s, cfg, err
}

func profileList(c *cli.Context) error {
	s, _, err := profileStore(c)
	if err != nil {
		return err
	}
	recs, err := s.List()
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ORIGIN\tIMAGE\tMANIFEST\tCHUNKS\tCREATED\tKEY")
	for _, r := range recs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", r.Origin, r.Ref, r.Manifest, len(r.Profile.Reads),
			r.Created.Local().Format(time.RFC3339), profile.Key(r.Profile.Layers))
	}
	tw.Flush()
	return err
}

// matching returns the profiles of s for image ref or key, of origin if
// not empty.
func matching(s *profile.Store, arg, origin string) ([]*profile.Record, error) {
	recs, err := s.List()
	want := normalRef(arg)
	var out []*profile.Record
	for _, r := range recs {
		if (origin == "" || r.Origin == origin) && (profile.Key(r.Profile.Layers) == arg || (want != "" && normalRef(r.Ref) == want)) {
			out = append(out, r)
		}
	}
	if len(out) == 0 {
		return nil, errors.Join(fmt.Errorf("no %sprofile of %s on this node (lazypull profile list shows them)", strings.TrimSpace(origin+" "), arg), err)
	}
	return out, nil
}

// normalRef is ref in its full form (docker.io/library/app:latest), or ""
// if it is not a reference.
func normalRef(ref string) string {
	n, err := reference.ParseDockerRef(ref)
	if err != nil {
		return ""
	}
	return n.String()
}

func profileShow(c *cli.Context) error {
	if err := needArgs(c, 1); err != nil {
		return err
	}
	s, _, err := profileStore(c)
	if err != nil {
		return err
	}
	recs, err := matching(s, c.Args().First(), "")
	if err != nil {
		return err
	}
	enc := json.NewEncoder(c.App.Writer)
	enc.SetIndent("", "  ")
	for _, r := range recs {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

func profilePush(c *cli.Context) error {
	if err := needArgs(c, 1); err != nil {
		return err
	}
	ref := c.Args().First()
	s, cfg, err := profileStore(c)
	if err != nil {
		return err
	}
	recs, err := matching(s, ref, profile.Recorded)
	if err != nil {
		return err
	}
	hostsDir := cfg.Remote.HostsDir
	if c.IsSet("hosts-dir") {
		hostsDir = c.String("hosts-dir")
	}
	res, err := remote.NewResolver(remote.WithHostsDir(hostsDir), remote.WithUserAgent("lazypull/"+version))
	if err != nil {
		return err
	}
	defer res.Close()
	client, err := profile.NewClient(profileRegistry{res}, profile.Limits{Size: cfg.Profile.MaxSize.Int64(), Entries: cfg.Profile.MaxEntries})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	for _, r := range recs {
		d, err := client.Push(ctx, ref, r.Manifest, r.Profile)
		if err != nil {
			return fmt.Errorf("push the profile of %s (manifest %s): %w", ref, r.Manifest, err)
		}
		fmt.Fprintf(c.App.ErrWriter, "published the profile of %s (manifest %s, %d chunks)\n", ref, r.Manifest, len(r.Profile.Reads))
		fmt.Fprintf(c.App.Writer, "%s@%s\n", strings.SplitN(ref, "@", 2)[0], d)
	}
	return nil
}

// profileRegistry gives profile's Client the registry client's hosts.
type profileRegistry struct{ r *remote.Resolver }

func (p profileRegistry) Endpoints(ctx context.Context, ref string, push bool) ([]profile.Endpoint, error) {
	hs, err := p.r.RepositoryHosts(ref, push)
	if err != nil {
		return nil, err
	}
	eps := make([]profile.Endpoint, len(hs))
	for i, h := range hs {
		eps[i] = profile.Endpoint(h)
	}
	return eps, nil
}
