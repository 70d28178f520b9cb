package convert

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"strconv"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The manifest, config and index are edited as JSON objects rather than
// decoded into Go structs and re-encoded, so that fields this package does
// not know about (history, vendor extensions, subject, ...) survive.

// rewriteConfig replaces rootfs.diff_ids in the image config raw.
func rewriteConfig(raw []byte, diffIDs []v1.Hash) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	rootfs := map[string]json.RawMessage{}
	if r, ok := top["rootfs"]; ok {
		if err := json.Unmarshal(r, &rootfs); err != nil {
			return nil, fmt.Errorf("image config rootfs: %w", err)
		}
	} else {
		rootfs["type"] = json.RawMessage(`"layers"`)
	}
	ids, err := marshal(diffIDs)
	if err != nil {
		return nil, err
	}
	rootfs["diff_ids"] = ids
	if top["rootfs"], err = marshal(rootfs); err != nil {
		return nil, err
	}
	return marshal(top)
}

// rewriteManifest points the image manifest raw at a new config blob and
// replaces its layer descriptors.
func rewriteManifest(raw []byte, configDigest v1.Hash, configSize int64, layers []v1.Descriptor) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	var cfg v1.Descriptor
	if err := json.Unmarshal(top["config"], &cfg); err != nil {
		return nil, fmt.Errorf("manifest config descriptor: %w", err)
	}
	cfg.Digest, cfg.Size, cfg.Data = configDigest, configSize, nil
	var err error
	if top["config"], err = marshal(cfg); err != nil {
		return nil, err
	}
	if top["layers"], err = marshal(layers); err != nil {
		return nil, err
	}
	return marshal(top)
}

// rewriteIndex replaces the manifest list of the index raw.
func rewriteIndex(raw []byte, manifests []v1.Descriptor) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, fmt.Errorf("index: %w", err)
	}
	var err error
	if top["manifests"], err = marshal(manifests); err != nil {
		return nil, err
	}
	return marshal(top)
}

// layerDescriptor is the descriptor of the converted form of the layer
// described by src.
func layerDescriptor(src v1.Descriptor, r LayerResult) v1.Descriptor {
	if !r.Converted {
		return src
	}
	d := v1.Descriptor{
		MediaType:   types.OCILayer,
		Digest:      r.Digest,
		Size:        r.Size,
		Annotations: maps.Clone(src.Annotations),
		// URLs and Data described the source blob: dropped.
	}
	if strings.HasPrefix(string(src.MediaType), "application/vnd.docker.") {
		d.MediaType = types.DockerLayer
	}
	if d.Annotations == nil {
		d.Annotations = map[string]string{}
	}
	d.Annotations[estargz.TOCJSONDigestAnnotation] = r.TOCDigest
	d.Annotations[estargz.StoreUncompressedSizeAnnotation] = strconv.FormatInt(r.UncompressedSize, 10)
	return d
}

// marshal encodes v as compact JSON without escaping <, > and &, which
// json.Marshal would do even inside json.RawMessage values, needlessly
// changing the bytes of fields copied from the source.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// image is a converted image whose layers are already in the destination
// repository; pushing it uploads its config and manifest.
type image struct {
	manifest, config []byte
	mediaType        types.MediaType
	layers           map[v1.Hash]v1.Descriptor
}

var _ partial.CompressedImageCore = (*image)(nil)

func (i *image) RawConfigFile() ([]byte, error)      { return i.config, nil }
func (i *image) MediaType() (types.MediaType, error) { return i.mediaType, nil }
func (i *image) RawManifest() ([]byte, error)        { return i.manifest, nil }
func (i *image) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	d, ok := i.layers[h]
	if !ok {
		return nil, fmt.Errorf("layer %s: not in the converted image", h)
	}
	return pushedLayer{d}, nil
}

// pushedLayer is a layer blob that is already in the destination
// repository (uploaded right after its conversion, or a non-distributable
// layer the pusher skips), so its content is never needed again.
type pushedLayer struct{ d v1.Descriptor }

func (l pushedLayer) Digest() (v1.Hash, error)            { return l.d.Digest, nil }
func (l pushedLayer) Size() (int64, error)                { return l.d.Size, nil }
func (l pushedLayer) MediaType() (types.MediaType, error) { return l.d.MediaType, nil }
func (l pushedLayer) Compressed() (io.ReadCloser, error) {
	return nil, fmt.Errorf("layer %s: already pushed, its staged copy is gone", l.d.Digest)
}

// rawManifest is a manifest to put as is.
type rawManifest struct {
	raw       []byte
	mediaType types.MediaType
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.raw, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return m.mediaType, nil }
