package config_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/heraldmq/herald/internal/config"
)

// FuzzLoad feeds arbitrary bytes to Load as a YAML file: it may reject them,
// but must not panic, and what it accepts must validate and render.
func FuzzLoad(f *testing.F) {
	for _, name := range []string{"full.yaml", "example.yaml"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "herald.yaml")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := config.Load(path, []string{"HERALD_KINDS__FUZZ__TYPE=noop"}, nil)
		if err != nil {
			return
		}
		_ = c.Validate()
		if _, err := c.Redacted().YAML(); err != nil {
			t.Fatalf("YAML of a loaded config: %v", err)
		}
	})
}
