package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"maunium.net/go/mautrix/id"

	"github.com/weftchat/weft/internal/config"
	"github.com/weftchat/weft/room"
)

// signingKeyFile is the server's ed25519 key in Synapse's format, one line
// "ed25519 <version> <unpadded base64 seed>", so operators can move keys
// between Synapse and Weft.
const signingKeyFile = "signing.key"

// loadOrCreateSigningKey reads data_dir/signing.key, generating it on first start.
func loadOrCreateSigningKey(cfg *config.Config) (room.Signer, error) {
	path := filepath.Join(cfg.DataDir, signingKeyFile)
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
			return room.Signer{}, fmt.Errorf("creating data_dir: %w", err)
		}
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return room.Signer{}, err
		}
		var v [4]byte
		_, _ = rand.Read(v[:])
		version := "a_" + base64.RawURLEncoding.EncodeToString(v[:])[:4]
		line := fmt.Sprintf("ed25519 %s %s\n", version, base64.RawStdEncoding.EncodeToString(priv.Seed()))
		// O_EXCL: two processes starting at once cannot both write a key.
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return room.Signer{}, fmt.Errorf("creating signing key %s: %w", path, err)
		}
		if _, err := f.WriteString(line); err != nil {
			f.Close()
			return room.Signer{}, fmt.Errorf("writing signing key: %w", err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return room.Signer{}, fmt.Errorf("writing signing key: %w", err)
		}
		if err := f.Close(); err != nil {
			return room.Signer{}, err
		}
		raw = []byte(line)
	} else if err != nil {
		return room.Signer{}, fmt.Errorf("reading signing key %s: %w", path, err)
	}
	return parseSigningKey(cfg.ServerName, string(raw), path)
}

func parseSigningKey(serverName, text, path string) (room.Signer, error) {
	fields := strings.Fields(strings.TrimSpace(strings.SplitN(text, "\n", 2)[0]))
	if len(fields) != 3 || fields[0] != "ed25519" {
		return room.Signer{}, fmt.Errorf("%s is not a signing key (want one line \"ed25519 <version> <base64 seed>\")", path)
	}
	seed, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(fields[2], "="))
	if err != nil || len(seed) != ed25519.SeedSize {
		return room.Signer{}, fmt.Errorf("%s: the key is not a base64 ed25519 seed", path)
	}
	return room.Signer{ServerName: serverName, KeyID: id.KeyID("ed25519:" + fields[1]), Key: ed25519.NewKeyFromSeed(seed)}, nil
}

// keysCommand is `weft keys show`: the key ID and public key.
func keysCommand(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "show" {
		return errors.New("usage: weft keys show [-c weft.yaml]")
	}
	cfgPath := os.Getenv("WEFT_CONFIG")
	if len(args) == 3 && args[1] == "-c" {
		cfgPath = args[2]
	}
	cfg, err := config.Load(cfgPath, os.Environ())
	if err != nil {
		return err
	}
	s, err := loadOrCreateSigningKey(cfg)
	if err != nil {
		return err
	}
	pub := s.Key.Public().(ed25519.PublicKey)
	fmt.Fprintf(stdout, "server_name: %s\nkey_id: %s\npublic_key: %s\n", cfg.ServerName, s.KeyID, base64.RawStdEncoding.EncodeToString(pub))
	return nil
}
