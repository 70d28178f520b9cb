package integration

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/lazypull/lazypull/integration/testbed"
)

// TestCRIImageFsInfo checks what kubelet sees of a lazily pulled image
// through the CRI: the image filesystem usage (`crictl imagefsinfo`, which
// drives kubelet's image garbage collection and eviction) counts every
// lazily pulled layer with the uncompressed size of its files, as for a
// layer pulled normally, rather than nothing; it names the filesystem that
// holds lazypull's data (2.x: lazypulld's root, exported by the proxy
// plugin; 1.6 names <containerd root>/io.containerd.snapshotter.v1.lazypull,
// which the README tells 1.6 users to make lazypulld's root); and the
// image's size in the image list is its layers' size, not that of the
// little the content store holds.
func TestCRIImageFsInfo(t *testing.T) {
	forEachFlavour(t, func(t *testing.T, f testbed.Flavour) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		lb := newLazyBed(t, f, lazyBedOptions{CRI: true})
		ref, img := pushConverted(t, ctx, lb)
		crictl := testbed.NewCrictl(t, lb.Containerd, "")
		if _, err := crictl.Run(ctx, "pull", ref); err != nil {
			t.Fatal(err)
		}
		cl := lb.Containerd.Client(t)
		pulled := inspectImage(t, namespaces.WithNamespace(ctx, testbed.CRINamespace), cl, ref)
		requireLazyLabels(t, namespaces.WithNamespace(ctx, testbed.CRINamespace), cl, pulled)

		// What the layers' files take uncompressed; each layer's
		// filesystem counts in 4 KiB blocks and holds a landmark file.
		files := img.fileBytes()
		most := files + int64(len(img.layers))*(4<<10)

		var used uint64
		var mountpoint string
		wait, cancelWait := context.WithTimeout(ctx, time.Minute)
		defer cancelWait()
		for used < uint64(files) { // the CRI collects usage every second in the bed
			if wait.Err() != nil {
				t.Fatalf("image filesystem usage %d bytes, want at least the %d bytes of the lazily pulled layers' files", used, files)
			}
			out, err := crictl.Run(ctx, "imagefsinfo", "--output", "json")
			if err != nil {
				t.Fatal(err)
			}
			used, mountpoint = parseImageFsInfo(t, out)
			if used < uint64(files) {
				time.Sleep(200 * time.Millisecond) // polling the CRI's collection, not ordering goroutines
			}
		}
		t.Logf("image filesystem: %s, %d bytes used; the layers' files are %d bytes", mountpoint, used, files)
		if used > uint64(most) {
			t.Errorf("image filesystem usage %d bytes, more than the %d bytes of the layers' files and their blocks", used, most)
		}
		want := lb.Lazypulld.Root
		if f.ConfigVersion < 3 {
			want = filepath.Join(lb.Containerd.Root, "io.containerd.snapshotter.v1.lazypull")
		}
		if mountpoint != want {
			t.Errorf("image filesystem mountpoint %q, want %q", mountpoint, want)
		}

		out, err := crictl.Run(ctx, "images", "--output", "json")
		if err != nil {
			t.Fatal(err)
		}
		var list struct {
			Images []struct {
				RepoTags []string `json:"repoTags"`
				Size     string   `json:"size"`
			} `json:"images"`
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			t.Fatalf("crictl images: %v\n%s", err, out)
		}
		for _, im := range list.Images {
			size, _ := strconv.ParseInt(im.Size, 10, 64)
			t.Logf("image %v: size %d; its layers are %d bytes compressed", im.RepoTags, size, pulled.layerSize())
			if size < pulled.layerSize() {
				t.Errorf("image %v: size %d, less than its layers' %d bytes", im.RepoTags, size, pulled.layerSize())
			}
		}
	})
}

// parseImageFsInfo returns the used bytes and mountpoint of the first image
// filesystem (the one kubelet reads) of `crictl imagefsinfo -o json`.
func parseImageFsInfo(t *testing.T, out string) (uint64, string) {
	t.Helper()
	var info struct {
		Status struct {
			ImageFilesystems []struct {
				FsID struct {
					Mountpoint string `json:"mountpoint"`
				} `json:"fsId"`
				UsedBytes struct {
					Value string `json:"value"`
				} `json:"usedBytes"`
			} `json:"imageFilesystems"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Status.ImageFilesystems) == 0 {
		t.Fatalf("crictl imagefsinfo: %v\n%s", err, out)
	}
	fs := info.Status.ImageFilesystems[0]
	used, err := strconv.ParseUint(fs.UsedBytes.Value, 10, 64)
	if err != nil {
		t.Fatalf("crictl imagefsinfo: used bytes %q: %v\n%s", fs.UsedBytes.Value, err, out)
	}
	return used, fs.FsID.Mountpoint
}
