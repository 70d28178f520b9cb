// Package cri is lazypull's image-service proxy for the Kubernetes
// Container Runtime Interface (CRI).
//
// kubelet hands the credentials of a pod's image pull secrets to the CRI
// (PullImageRequest.Auth), which is containerd's CRI plugin; containerd
// passes none to snapshotters. lazypulld reads layers from the registry
// itself, so without them every layer of a private image falls back to a
// normal pull. kubelet's --image-service-endpoint can point at a Proxy
// instead: it forwards every ImageService call to containerd's CRI plugin
// unchanged and, for the time of a pull and after it, keeps the pull's
// credentials with a Keeper (a Store, which lazypulld's registry client
// asks before docker's config.json) by registry host and repository.
// Credentials are kept before the pull is forwarded, because containerd
// mounts the layers while the pull is in flight; if the pull fails they
// are dropped again. They are never logged.
package cri

import (
	"context"
	"errors"
	"io"

	"github.com/containerd/log"
	"google.golang.org/grpc"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Proxy is a CRI ImageService that forwards to another one. Its methods
// are safe for concurrent use.
type Proxy struct {
	runtime.UnimplementedImageServiceServer
	upstream runtime.ImageServiceClient
	keep     Keeper
}

// NewProxy returns a Proxy that forwards to the CRI image service on conn
// (containerd's socket) and keeps pull credentials with keep.
func NewProxy(conn grpc.ClientConnInterface, keep Keeper) *Proxy {
	return &Proxy{upstream: runtime.NewImageServiceClient(conn), keep: keep}
}

// Register registers p as the ImageService of s.
func (p *Proxy) Register(s *grpc.Server) { runtime.RegisterImageServiceServer(s, p) }

var _ runtime.ImageServiceServer = (*Proxy)(nil)

// PullImage keeps the request's credentials for the image's repository,
// forwards the pull and drops the credentials again if it fails.
func (p *Proxy) PullImage(ctx context.Context, r *runtime.PullImageRequest) (*runtime.PullImageResponse, error) {
	image := r.GetImage().GetImage()
	logger := log.G(ctx).WithField("image", image)
	if host, repo, err := imageRepo(image); err != nil {
		logger.WithError(err).Debug("pull of an image reference the proxy cannot read; forwarded without keeping credentials")
	} else if a, ok, err := pullAuth(r.GetAuth(), host); err != nil {
		logger.WithError(err).Warn("pull credentials cannot be read; forwarded without keeping them")
	} else if ok {
		undo := p.keep.Keep(ctx, host, repo, a)
		logger.WithFields(log.Fields{"host": host, "repository": repo}).Debug("pull with credentials")
		resp, err := p.upstream.PullImage(ctx, r)
		if err != nil {
			undo()
		}
		return resp, err
	}
	return p.upstream.PullImage(ctx, r)
}

// ListImages forwards the call.
func (p *Proxy) ListImages(ctx context.Context, r *runtime.ListImagesRequest) (*runtime.ListImagesResponse, error) {
	return p.upstream.ListImages(ctx, r)
}

// ImageStatus forwards the call.
func (p *Proxy) ImageStatus(ctx context.Context, r *runtime.ImageStatusRequest) (*runtime.ImageStatusResponse, error) {
	return p.upstream.ImageStatus(ctx, r)
}

// RemoveImage forwards the call.
func (p *Proxy) RemoveImage(ctx context.Context, r *runtime.RemoveImageRequest) (*runtime.RemoveImageResponse, error) {
	return p.upstream.RemoveImage(ctx, r)
}

// ImageFsInfo forwards the call.
func (p *Proxy) ImageFsInfo(ctx context.Context, r *runtime.ImageFsInfoRequest) (*runtime.ImageFsInfoResponse, error) {
	return p.upstream.ImageFsInfo(ctx, r)
}

// StreamImages forwards the stream, message by message.
func (p *Proxy) StreamImages(r *runtime.StreamImagesRequest, s grpc.ServerStreamingServer[runtime.StreamImagesResponse]) error {
	up, err := p.upstream.StreamImages(s.Context(), r)
	if err != nil {
		return err
	}
	for {
		m, err := up.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.Send(m); err != nil {
			return err
		}
	}
}
