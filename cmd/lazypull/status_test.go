package main

import (
	"bytes"
	"strings"
	"testing"
)

// status's table says, per layer, whether it is lazy, how much of it is
// local and what was fetched, and why a layer is not lazy.
func TestPrintImageStatuses(t *testing.T) {
	local, total, fetched := int64(1<<20), int64(4<<20), int64(1<<20+512)
	imgs := []imageStatus{{Ref: "registry.test/app:1", Layers: []layerStatusLocal{
		{Digest: "sha256:" + strings.Repeat("a", 64), Size: 3 << 20, Verified: "containerd", Reason: "fallback: layer has no TOC digest annotation"},
		{Digest: "sha256:" + strings.Repeat("b", 64), Lazy: true, Verified: "pending", LocalBytes: &local, TotalBytes: &total, FetchedBytes: &fetched},
	}}}
	var out bytes.Buffer
	printImageStatuses(&out, imgs)
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("table:\n%s\nwant a header and 2 rows", out.String())
	}
	for i, want := range [][]string{
		{"IMAGE", "LAYER", "LAZY", "LOCAL", "FETCHED", "VERIFIED", "REASON"},
		{"registry.test/app:1", "sha256:aaaaaaaaaaaa", "no", "3.0 MiB", "-", "containerd", "fallback: layer has no TOC digest"},
		{"sha256:bbbbbbbbbbbb", "yes", "1.0 MiB/4.0 MiB (25%)", "1.0 MiB", "pending"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %d %q lacks %q", i, lines[i], w)
			}
		}
	}
	if strings.Contains(lines[2], "registry.test") {
		t.Errorf("image named again on its second layer: %q", lines[2])
	}
}
