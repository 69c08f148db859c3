package httpapi

import (
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

type openAPIDoc struct {
	OpenAPI string                                     `json:"openapi"`
	Paths   map[string]map[string]openAPIOperation     `json:"paths"`
	Comps   struct{ Responses map[string]openAPIResp } `json:"components"`
}

type openAPIOperation struct {
	Security  *[]map[string][]string `json:"security"`
	Responses map[string]openAPIResp `json:"responses"`
}

type openAPIResp struct {
	Ref     string `json:"$ref"`
	Content map[string]struct {
		Schema struct {
			Ref string `json:"$ref"`
		} `json:"schema"`
	} `json:"content"`
}

func loadOpenAPI(t *testing.T) openAPIDoc {
	t.Helper()
	var doc openAPIDoc
	if err := json.Unmarshal(openAPIDocument, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi = %q; want 3.1.0", doc.OpenAPI)
	}
	return doc
}

// TestOpenAPIMatchesRoutes: openapi.json documents exactly the routes the
// mux registers, and every documented error uses the Error schema.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	t.Parallel()
	doc := loadOpenAPI(t)
	s := New(nil, Options{Metrics: http.NotFoundHandler()})

	documented := map[string]openAPIOperation{}
	for path, ops := range doc.Paths {
		for method, op := range ops {
			documented[strings.ToUpper(method)+" "+path] = op
		}
	}
	registered := map[string]route{}
	for _, rt := range s.routes() {
		key := rt.method + " " + rt.path
		registered[key] = rt
		// The mux really serves the route under this pattern.
		r := httptest.NewRequestWithContext(t.Context(), rt.method, samplePath(rt.path), nil)
		if _, pattern := s.mux.Handler(r); pattern != key {
			t.Errorf("mux serves %s %s with pattern %q; want %q", rt.method, samplePath(rt.path), pattern, key)
		}
	}
	if got, want := slices.Sorted(maps.Keys(documented)), slices.Sorted(maps.Keys(registered)); !slices.Equal(got, want) {
		t.Errorf("documented routes:\n%v\nregistered routes:\n%v", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	for key, op := range documented {
		rt, ok := registered[key]
		if !ok {
			continue
		}
		if rt.public != (op.Security != nil && len(*op.Security) == 0) {
			t.Errorf("%s: public=%v but security is %v", key, rt.public, op.Security)
		}
		var want []string
		if !rt.public {
			want = append(want, "401")
		}
		if rt.write {
			want = append(want, "503")
		}
		if rt.enqueue {
			want = append(want, "400", "413", "415", "422", "429")
		}
		for _, code := range want {
			if _, ok := op.Responses[code]; !ok {
				t.Errorf("%s: response %s is not documented", key, code)
			}
		}
		for code, resp := range op.Responses {
			status, err := strconv.Atoi(code)
			if err != nil {
				t.Errorf("%s: response code %q", key, code)
				continue
			}
			if status < 400 {
				continue
			}
			if name, ok := strings.CutPrefix(resp.Ref, "#/components/responses/"); ok {
				resp, ok = doc.Comps.Responses[name]
				if !ok {
					t.Errorf("%s %s: dangling %s", key, code, name)
					continue
				}
			}
			if got := resp.Content["application/json"].Schema.Ref; got != "#/components/schemas/Error" {
				t.Errorf("%s %s: schema %q; want the Error schema", key, code, got)
			}
		}
	}
}

// samplePath fills a route's wildcards with sample values.
func samplePath(pattern string) string {
	return strings.NewReplacer("{id}", "1", "{topic}", "t", "{key}", "k", "{kind}", "noop").Replace(pattern)
}

func TestOpenAPIServed(t *testing.T) {
	t.Parallel()
	b := setup(t, Options{})
	rec := b.do(http.MethodGet, "/openapi.json", "")
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, Content-Type %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	if !json.Valid(rec.Body.Bytes()) {
		t.Error("served document is not JSON")
	}
}

// TestOpenAPIJobSchema: the Job schema names exactly the fields the API
// renders, and requires the ones that are always there.
func TestOpenAPIJobSchema(t *testing.T) {
	t.Parallel()
	var doc struct {
		Components struct {
			Schemas map[string]struct {
				Required   []string                   `json:"required"`
				Properties map[string]json.RawMessage `json:"properties"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openAPIDocument, &doc); err != nil {
		t.Fatal(err)
	}
	schema, ok := doc.Components.Schemas["Job"]
	if !ok {
		t.Fatal("openapi.json has no Job schema")
	}
	var fields, always []string
	typ := reflect.TypeFor[jobJSON]()
	for f := range typ.Fields() {
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		fields = append(fields, name)
		if !strings.Contains(opts, "omit") {
			always = append(always, name)
		}
	}
	slices.Sort(fields)
	slices.Sort(always)
	documented := slices.Sorted(maps.Keys(schema.Properties))
	if !slices.Equal(documented, fields) {
		t.Errorf("Job schema properties %v; the API renders %v", documented, fields)
	}
	required := slices.Clone(schema.Required)
	slices.Sort(required)
	if !slices.Equal(required, always) {
		t.Errorf("Job schema requires %v; always rendered: %v", required, always)
	}
}
