package herald_test

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/heraldmq/herald"
)

// TestConfigDocListsEveryField keeps docs/configuration.md in step with the
// Config and KindConfig structs: a new field needs a row.
func TestConfigDocListsEveryField(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []reflect.Type{reflect.TypeFor[herald.Config](), reflect.TypeFor[herald.KindConfig]()} {
		for f := range typ.Fields() {
			if !f.IsExported() {
				continue
			}
			if !strings.Contains(string(doc), "| `"+f.Name+"` |") {
				t.Errorf("docs/configuration.md has no row for %s.%s", typ.Name(), f.Name)
			}
		}
	}
}
