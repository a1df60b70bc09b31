package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"
)

// TestMatrixJSSDKMedia drives the media repository with matrix-js-sdk: the
// script (testdata/jssdk/media.mjs) logs in with a password, uploads a PNG
// and an HTML file with client.uploadContent(), downloads both through the
// authenticated media API at the URLs client.mxcUrlToHttp builds, and checks
// the bytes, Content-Disposition (inline for the PNG, attachment for the
// HTML), the security headers and two thumbnails of the PNG. It runs on the
// same Node 22 and npm packages as TestMatrixJSSDK, and like it fails, not
// skips, without Node.js and npm.
//
// Afterwards this test decodes the thumbnails the script received (the
// script only reads their headers) and fetches both uploads again with
// mautrix's client, so what the SDK stored is what another client gets.
func TestMatrixJSSDKMedia(t *testing.T) {
	dir, err := filepath.Abs(filepath.Join("testdata", "jssdk"))
	if err != nil {
		t.Fatal(err)
	}
	node := jssdkInstall(t, dir)

	srv := Start(t, Options{Env: mediaEnv(nil)})
	const password = "jssdk media password"
	user := registerUser(t, srv, "jssdk-media", password)
	out := t.TempDir()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "media.mjs")
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(),
		"JSSDK_BASE_URL="+srv.URL,
		"JSSDK_USER_ID="+user.UserID.String(),
		"JSSDK_PASSWORD="+password,
		"JSSDK_OUT_DIR="+out,
		"JSSDK_STEP_TIMEOUT_MS=20000",
	)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("media.mjs did not finish within 2 minutes; its output:\n%s", log.String())
	}
	if err != nil {
		t.Fatalf("media.mjs failed (%v); its output:\n%s", err, log.String())
	}
	t.Logf("media.mjs output:\n%s", log.String())

	raw, err := os.ReadFile(filepath.Join(out, "result.json"))
	if err != nil {
		t.Fatalf("media.mjs passed but left no result: %v", err)
	}
	var result map[string]string
	if err := json.Unmarshal(raw, &result); err != nil {
		t.Fatalf("result.json: %v: %s", err, raw)
	}

	for name, want := range map[string]image.Point{
		"thumb-crop-96x96":    {96, 96},
		"thumb-scale-320x240": {320, 160},
	} {
		data, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		img, format, err := image.Decode(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("%s (%s): does not decode: %v", name, result[name], err)
		}
		if "image/"+format != result[name] {
			t.Errorf("%s: served as %s, decodes as %s", name, result[name], format)
		}
		if got := img.Bounds().Size(); got != want {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}

	for key, file := range map[string]string{"png": "upload.png", "html": "upload.html"} {
		uri, err := id.ParseContentURI(result[key])
		if err != nil {
			t.Fatalf("%s: %q: %v", key, result[key], err)
		}
		want, err := os.ReadFile(filepath.Join(out, file))
		if err != nil {
			t.Fatal(err)
		}
		got, err := user.DownloadBytes(context.Background(), uri)
		if err != nil {
			t.Fatalf("mautrix downloading %s: %v", uri, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("mautrix got %d bytes for %s, js-sdk uploaded %d", len(got), uri, len(want))
		}
	}
}
