// Package weft holds what belongs to the repository as a whole: the sample
// configuration, embedded so `weft generate-config` prints exactly the file
// that the tests load.
package weft

import (
	"bytes"
	_ "embed"
)

//go:embed config.sample.yaml
var sampleConfig []byte

// SampleConfig returns a copy of config.sample.yaml.
func SampleConfig() []byte { return bytes.Clone(sampleConfig) }
