package e2e

import (
	"net/http"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// BenchmarkStartupEmbedded measures process start to the first served
// /_matrix/client/versions, with the embedded PostgreSQL cluster already
// initialised (initdb is a one-time cost of the very first start). It
// includes starting postgres, connecting, checking migrations and binding.
func BenchmarkStartupEmbedded(b *testing.B) {
	dataDir := TempDir(b)
	// First start initialises the cluster; not measured.
	first := Start(b, Options{Env: map[string]string{"WEFT_DATABASE_URL": ""}, DataDir: dataDir})
	first.Stop()
	bin := Binary(b)
	b.ResetTimer()
	for b.Loop() {
		addr := freeAddr(b)
		cmd := exec.Command(bin, "serve")
		cmd.Env = append(cleanEnv(), "WEFT_DATA_DIR="+dataDir, "WEFT_LISTEN="+addr, "WEFT_LOG_LEVEL=warn")
		start := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		for {
			resp, err := http.Get("http://" + addr + "/_matrix/client/versions")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			if time.Since(start) > time.Minute {
				b.Fatal("not serving after a minute")
			}
			time.Sleep(time.Millisecond)
		}
		b.StopTimer()
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		b.StartTimer()
	}
}
