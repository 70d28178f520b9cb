package profile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
)

func testLayers(n int) []digest.Digest {
	ls := make([]digest.Digest, n)
	for i := range ls {
		ls[i] = digest.FromString(fmt.Sprintf("layer %d", i))
	}
	return ls
}

func testProfile() *Profile {
	return &Profile{Version: 1, Layers: testLayers(2), Reads: []Read{
		{Layer: 1, Path: "usr/bin/python3.11", Offset: 0},
		{Layer: 0, Path: "usr/lib/x86_64-linux-gnu/libc.so.6", Offset: 4 << 20},
		{Layer: 1, Path: "usr/bin/python3.11", Offset: 4 << 20},
	}}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	p := testProfile()
	data, err := Encode(p, DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(bytes.NewReader(data), DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(p) {
		t.Fatalf("decoded %+v, want %+v", got, p)
	}
}

// TestDecodeHostile feeds Decode profiles a registry could serve: each is
// refused, whole, with an error of class InvalidArgument that names what
// is wrong.
func TestDecodeHostile(t *testing.T) {
	good := func() map[string]any {
		var m map[string]any
		data, _ := json.Marshal(testProfile())
		json.Unmarshal(data, &m)
		return m
	}
	withRead := func(r map[string]any) []byte {
		m := good()
		m["reads"] = append(m["reads"].([]any), r)
		data, _ := json.Marshal(m)
		return data
	}
	encode := func(f func(m map[string]any)) []byte {
		m := good()
		f(m)
		data, _ := json.Marshal(m)
		return data
	}
	small := Limits{Size: 1 << 10, Entries: 4}
	many := &Profile{Version: 1, Layers: testLayers(1)}
	for i := range 5 {
		many.Reads = append(many.Reads, Read{Path: fmt.Sprintf("f%d", i)})
	}
	manyData, _ := json.Marshal(many)
	tooManyLayers, _ := json.Marshal(&Profile{Version: 1, Layers: testLayers(MaxLayers + 1)})

	for _, tc := range []struct {
		name string
		data []byte
		lim  Limits
		want string
	}{
		{"larger than the limit", append(bytes.Repeat([]byte(" "), 2<<10), withRead(map[string]any{"layer": 0, "path": "a", "offset": 0})...), small, "more than 1024 bytes"},
		{"more reads than the limit", manyData, small, "5 reads, more than 4"},
		{"unknown field", encode(func(m map[string]any) { m["exec"] = "rm -rf /" }), DefaultLimits, `unknown field "exec"`},
		{"unknown field of a read", withRead(map[string]any{"layer": 0, "path": "a", "offset": 0, "size": 1}), DefaultLimits, `unknown field "size"`},
		{"absolute path", withRead(map[string]any{"layer": 0, "path": "/etc/shadow", "offset": 0}), DefaultLimits, "absolute"},
		{"path escaping", withRead(map[string]any{"layer": 0, "path": "../../etc/shadow", "offset": 0}), DefaultLimits, "not clean"},
		{"path not clean", withRead(map[string]any{"layer": 0, "path": "usr//bin", "offset": 0}), DefaultLimits, "not clean"},
		{"empty path", withRead(map[string]any{"layer": 0, "path": "", "offset": 0}), DefaultLimits, "empty path"},
		{"NUL in a path", withRead(map[string]any{"layer": 0, "path": "a\x00b", "offset": 0}), DefaultLimits, "NUL"},
		{"name too long", withRead(map[string]any{"layer": 0, "path": strings.Repeat("a", 256), "offset": 0}), DefaultLimits, "a name of 256 bytes"},
		{"layer out of range", withRead(map[string]any{"layer": 2, "path": "a", "offset": 0}), DefaultLimits, "layer 2, but the profile has 2 layers"},
		{"negative layer", withRead(map[string]any{"layer": -1, "path": "a", "offset": 0}), DefaultLimits, "layer -1"},
		{"negative offset", withRead(map[string]any{"layer": 0, "path": "a", "offset": -4096}), DefaultLimits, "negative offset"},
		{"read twice", withRead(map[string]any{"layer": 1, "path": "usr/bin/python3.11", "offset": 0}), DefaultLimits, "listed twice"},
		{"other version", encode(func(m map[string]any) { m["version"] = 2 }), DefaultLimits, "version 2"},
		{"bad layer digest", encode(func(m map[string]any) { m["layers"] = []string{"sha256:xyz"} }), DefaultLimits, "layers[0]"},
		{"no layers", encode(func(m map[string]any) { m["layers"] = []string{}; m["reads"] = []any{} }), DefaultLimits, "0 layers"},
		{"too many layers", tooManyLayers, DefaultLimits, "501 layers"},
		{"data after the value", append(encode(func(map[string]any) {}), []byte(`{"version":1}`)...), DefaultLimits, "data after"},
		{"not an object", []byte(`[1,2,3]`), DefaultLimits, "cannot unmarshal"},
		{"wrong type", []byte(`{"version":"1"}`), DefaultLimits, "cannot unmarshal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Decode(bytes.NewReader(tc.data), tc.lim)
			if err == nil {
				t.Fatalf("decoded %+v, want an error", p)
			}
			if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q (invalid argument: %v), want one of class invalid argument naming %q", err, errdefs.IsInvalidArgument(err), tc.want)
			}
		})
	}
}

func TestEncodeRefusesWhatDecodeWould(t *testing.T) {
	p := testProfile()
	p.Reads = append(p.Reads, Read{Layer: 0, Path: "../x"})
	if _, err := Encode(p, DefaultLimits); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Encode of a bad path: %v, want invalid argument", err)
	}
	if _, err := Encode(testProfile(), Limits{Size: 64, Entries: 10}); err == nil || !strings.Contains(err.Error(), "max_size") {
		t.Fatalf("Encode beyond the size limit: %v, want an error naming max_size", err)
	}
}

func TestKeyDependsOnLayersAndOrder(t *testing.T) {
	ls := testLayers(3)
	if Key(ls) == Key([]digest.Digest{ls[1], ls[0], ls[2]}) || Key(ls) == Key(ls[:2]) {
		t.Fatal("Key does not tell images of other layers, or of the same layers in another order, apart")
	}
	if Key(ls) != Key(testLayers(3)) {
		t.Fatal("Key is not stable")
	}
}
