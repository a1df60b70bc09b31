package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/weftchat/weft/internal/config"
)

func TestMediaDefaults(t *testing.T) {
	cfg, err := config.Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	m := cfg.Media
	if m.MaxUploadSize != 100<<20 || m.UserQuota != 0 || m.MaxPendingUploads != 10 ||
		time.Duration(m.UnusedExpiry) != 24*time.Hour || m.MaxImagePixels != 32_000_000 ||
		!m.FreezeUnauthenticated || m.URLPreview.Enabled {
		t.Fatalf("media defaults: %+v", m)
	}
	want := []config.ThumbnailSize{{32, 32, "crop"}, {96, 96, "crop"}, {320, 240, "scale"}, {640, 480, "scale"}, {800, 600, "scale"}}
	if len(m.ThumbnailSizes) != len(want) {
		t.Fatalf("thumbnail sizes %v", m.ThumbnailSizes)
	}
	for i := range want {
		if m.ThumbnailSizes[i] != want[i] {
			t.Fatalf("thumbnail size %d: %v, want %v", i, m.ThumbnailSizes[i], want[i])
		}
	}
}

func TestMediaFromFileAndEnvironment(t *testing.T) {
	p := writeFile(t, `
media:
  max_upload_size: 2048
  thumbnail_sizes:
    - {width: 50, height: 40, method: scale}
  url_preview:
    enabled: true
    ip_range_allowlist: ["10.1.0.0/16", "192.168.1.7"]
`)
	cfg, err := config.Load(p, []string{
		"WEFT_MEDIA_USER_QUOTA=1000000",
		"WEFT_MEDIA_FREEZE_UNAUTHENTICATED=false",
		"WEFT_MEDIA_UNUSED_EXPIRY=90s",
		"WEFT_MEDIA_URL_PREVIEW_TIMEOUT=3s",
	})
	if err != nil {
		t.Fatal(err)
	}
	m := cfg.Media
	if m.MaxUploadSize != 2048 || m.UserQuota != 1000000 || m.FreezeUnauthenticated ||
		time.Duration(m.UnusedExpiry) != 90*time.Second || !m.URLPreview.Enabled ||
		time.Duration(m.URLPreview.Timeout) != 3*time.Second {
		t.Fatalf("media config not applied: %+v", m)
	}
	if len(m.ThumbnailSizes) != 1 || m.ThumbnailSizes[0] != (config.ThumbnailSize{Width: 50, Height: 40, Method: "scale"}) {
		t.Fatalf("thumbnail sizes %v", m.ThumbnailSizes)
	}
	prefixes, err := m.URLPreview.AllowedPrefixes()
	if err != nil || len(prefixes) != 2 || prefixes[0].String() != "10.1.0.0/16" || prefixes[1].String() != "192.168.1.7/32" {
		t.Fatalf("allowlist %v %v", prefixes, err)
	}
}

func TestMediaInvalidValuesAreRejectedByKey(t *testing.T) {
	cases := map[string]string{
		"media: {max_upload_size: 0}":                                        "media.max_upload_size",
		"media: {user_quota: -1}":                                            "media.user_quota",
		"media: {max_pending_uploads: 0}":                                    "media.max_pending_uploads",
		"media: {unused_expiry: 10ms}":                                       "media.unused_expiry",
		"media: {max_image_pixels: 0}":                                       "media.max_image_pixels",
		"media: {thumbnail_sizes: [{width: 0, height: 5, method: crop}]}":    "media.thumbnail_sizes[0]",
		"media: {thumbnail_sizes: [{width: 5, height: 5, method: zoom}]}":    "media.thumbnail_sizes[0].method",
		"media: {thumbnail_sizes: [{width: 9999, height: 5, method: crop}]}": "media.thumbnail_sizes[0]",
		"media: {url_preview: {timeout: 0s}}":                                "media.url_preview.timeout",
		"media: {url_preview: {max_bytes: 10}}":                              "media.url_preview.max_bytes",
		"media: {url_preview: {ip_range_allowlist: [intranet]}}":             "media.url_preview.ip_range_allowlist",
		"media: {max_upload_bytes: 5}":                                       "max_upload_bytes",
	}
	for body, want := range cases {
		_, err := config.Load(writeFile(t, body), nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: want error naming %s, got %v", body, want, err)
		}
	}
	// Lists of sizes are file-only: the environment cannot half-set them.
	if _, err := config.Load("", []string{"WEFT_MEDIA_THUMBNAIL_SIZES=32x32"}); err == nil {
		t.Errorf("WEFT_MEDIA_THUMBNAIL_SIZES accepted")
	}
}
