package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/lazypull/lazypull/convert"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func convertCommand() *cli.Command {
	return &cli.Command{
		Name:      "convert",
		Usage:     "convert an image in a registry to eStargz and push it",
		ArgsUsage: "SRC DST",
		Description: `Reads the image or multi-platform index SRC from its registry, rebuilds every
layer as eStargz (so that lazypull can mount it lazily) and pushes the result
to DST. Registry credentials come from the docker config (~/.docker/config.json
and its credential helpers). Progress goes to stderr; the pushed reference,
with its digest, to stdout.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "prioritize", Usage: "`FILE` listing paths (one per line, # comments) to put first in each layer, for prefetch"},
			&cli.IntFlag{Name: "chunk-size", Usage: "split files into chunks of this many `BYTES` (0: estargz default, 4 MiB)"},
			&cli.IntFlag{Name: "compression-level", Value: 9, Usage: "gzip `LEVEL`, 0-9"},
			&cli.BoolFlag{Name: "plain-http", Usage: "use plain HTTP for both registries (loopback and private addresses always do)"},
			&cli.StringSliceFlag{Name: "platform", Usage: "convert only these `PLATFORMS` of an index (os/arch[/variant]; repeatable or comma separated)"},
			&cli.IntFlag{Name: "jobs", Value: convert.DefaultJobs, Usage: "convert up to `N` layers at the same time"},
			&cli.StringFlag{Name: "tmp-dir", Usage: "`DIR` to stage layers in (default: $TMPDIR)"},
		},
		Action: convertAction,
	}
}

func convertAction(c *cli.Context) error {
	if err := needArgs(c, 2); err != nil {
		return err
	}
	src, dst := c.Args().Get(0), c.Args().Get(1)
	opts := []convert.Opt{
		convert.WithChunkSize(c.Int("chunk-size")),
		convert.WithJobs(c.Int("jobs")),
		convert.WithTempDir(c.String("tmp-dir")),
		convert.WithUserAgent("lazypull"),
	}
	if c.IsSet("compression-level") {
		opts = append(opts, convert.WithCompressionLevel(c.Int("compression-level")))
	}
	if c.Bool("plain-http") {
		opts = append(opts, convert.WithPlainHTTP())
	}
	if f := c.String("prioritize"); f != "" {
		paths, err := readPathList(f)
		if err != nil {
			return cli.Exit(fmt.Sprintf("--prioritize: %v", err), exitUsage)
		}
		opts = append(opts, convert.WithPrioritizedFiles(paths))
	}
	for _, s := range c.StringSlice("platform") {
		for _, p := range strings.Split(s, ",") {
			plat, err := v1.ParsePlatform(strings.TrimSpace(p))
			if err != nil {
				return cli.Exit(fmt.Sprintf("--platform %q: %v", p, err), exitUsage)
			}
			opts = append(opts, convert.WithPlatforms(*plat))
		}
	}
	view := newProgressView(c.App.ErrWriter, isTerminal(c.App.ErrWriter))
	opts = append(opts, convert.WithProgress(view.update))
	res, err := convert.Convert(c.Context, src, dst, opts...)
	view.close()
	if err != nil {
		return err
	}
	fmt.Fprintln(c.App.ErrWriter, summary(res))
	fmt.Fprintf(c.App.Writer, "%s@%s\n", strings.SplitN(dst, "@", 2)[0], res.Digest)
	return nil
}

// readPathList reads a file of paths, one per line; blank lines and lines
// starting with # are ignored.
func readPathList(file string) ([]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parsePathList(f)
}

func parsePathList(r io.Reader) ([]string, error) {
	var paths []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		paths = append(paths, line)
	}
	return paths, sc.Err()
}

// summary says what Convert did, counting each distinct layer once.
func summary(res *convert.Result) string {
	seen := map[v1.Hash]bool{}
	var n, pushed int
	var in, out, uncompressed, pushedBytes int64
	for _, img := range res.Images {
		for _, l := range img.Layers {
			if seen[l.Digest] {
				continue
			}
			seen[l.Digest] = true
			n++
			in += l.SourceSize
			out += l.Size
			uncompressed += l.UncompressedSize
			if l.Pushed {
				pushed++
				pushedBytes += l.Size
			}
		}
	}
	s := fmt.Sprintf("converted %d layers of %d image(s): %s -> %s eStargz (%s uncompressed); pushed %d layers (%s), %d already present",
		n, len(res.Images), human(in), human(out), human(uncompressed), pushed, human(pushedBytes), n-pushed)
	for _, sk := range res.Skipped {
		s += fmt.Sprintf("\nleft out %s (%s): %s", sk.Digest, sk.Platform, sk.Reason)
	}
	return s
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
