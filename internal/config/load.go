package config

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/posflag"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"
)

// EnvPrefix starts every environment variable Load reads.
const EnvPrefix = "HERALD_"

// flagKeys maps the flags RegisterFlags defines onto config keys.
var flagKeys = map[string]string{
	"listen":           "listen",
	"data-dir":         "data_dir",
	"store":            "store",
	"workers":          "workers",
	"lease":            "lease",
	"insecure":         "insecure",
	"log-level":        "log.level",
	"log-format":       "log.format",
	"shutdown-timeout": "shutdown_timeout",
}

// RegisterFlags defines the flags that override configuration keys:
// --listen, --data-dir, --store, --workers, --lease, --insecure, --log-level,
// --log-format and --shutdown-timeout. Their defaults are shown in help
// only; Load applies a flag only when the user set it.
func RegisterFlags(flags *pflag.FlagSet) {
	d := Default()
	flags.String("listen", d.Listen, "HTTP API address, host:port (listen)")
	flags.String("data-dir", d.DataDir, "directory of the embedded SQLite store (data_dir)")
	flags.String("store", d.Store, `store: empty for SQLite in --data-dir, a SQLite file path, or a postgres:// URL (store)`)
	flags.Int("workers", d.Workers, "global cap on running jobs (workers)")
	flags.Duration("lease", d.Lease, "how long a claimed job stays this node's without renewal (lease)")
	flags.Bool("insecure", d.Insecure, "allow a non-loopback --listen without tokens (insecure)")
	flags.String("log-level", d.Log.Level, "log level: debug, info, warn or error (log.level)")
	flags.String("log-format", d.Log.Format, "log format: auto, text or json (log.format)")
	flags.Duration("shutdown-timeout", d.ShutdownTimeout, "graceful shutdown limit (shutdown_timeout)")
}

// Load reads the configuration in layers, each overriding the one before:
// Default < the YAML file at path (skipped when path is "") < HERALD_*
// variables in environ (os.Environ() in production) < the flags in flags
// that the user set (flags may be nil; see RegisterFlags).
//
// Environment variables whose first key segment is not a configuration key
// (HERALD_REQUIRE_SERVICES, say) are ignored, since other tools share the
// prefix; below a known key, as in the file, an unknown key is an error.
//
// Problems in the sources — unknown keys, values of the wrong type — are
// all returned together, each naming its key and source and matching
// ErrInvalid. Load does not call Validate.
func Load(path string, environ []string, flags *pflag.FlagSet) (Config, error) {
	layers := make([]layer, 0, 3)

	if path != "" {
		k := koanf.New(".")
		if err := k.Load(file.Provider(path), yaml.Parser()); err != nil {
			if _, ok := errors.AsType[*fs.PathError](err); ok {
				return Config{}, fmt.Errorf("config file: %w", err)
			}
			return Config{}, fmt.Errorf("%w: config file %s: %w", ErrInvalid, path, err)
		}
		layers = append(layers, layer{k: k, source: func(string) string { return "file " + path }})
	}

	envNames := make(map[string]string)
	k := koanf.New(".")
	err := k.Load(env.Provider(".", env.Opt{
		Prefix:        EnvPrefix,
		EnvironFunc:   func() []string { return environ },
		TransformFunc: envTransform(envNames),
	}), nil)
	if err != nil {
		return Config{}, fmt.Errorf("environment: %w", err)
	}
	layers = append(layers, layer{k: k, source: func(key string) string {
		if name, ok := envNames[key]; ok {
			return "env " + name
		}
		return "environment"
	}})

	if flags != nil {
		flagNames := make(map[string]string)
		k := koanf.New(".")
		err := k.Load(posflag.ProviderWithFlag(flags, ".", nil, func(f *pflag.Flag) (string, any) {
			key, ok := flagKeys[f.Name]
			if !ok {
				return "", nil
			}
			flagNames[key] = "--" + f.Name
			return key, posflag.FlagVal(flags, f)
		}), nil)
		if err != nil {
			return Config{}, fmt.Errorf("flags: %w", err)
		}
		layers = append(layers, layer{k: k, source: func(key string) string { return "flag " + flagNames[key] }})
	}

	// Decode each layer alone first, so that every problem names the
	// source it came from; then merge the layers and decode the result.
	var problems []error
	merged := koanf.New(".")
	for _, l := range layers {
		d := decoder{source: l.source}
		scratch := Default()
		d.decode("", l.k.Raw(), reflect.ValueOf(&scratch).Elem())
		problems = append(problems, d.problems...)
		if err := merged.Merge(l.k); err != nil {
			return Config{}, err
		}
	}
	if len(problems) > 0 {
		return Config{}, errors.Join(problems...)
	}
	c := Default()
	d := decoder{source: func(string) string { return "" }}
	d.decode("", merged.Raw(), reflect.ValueOf(&c).Elem())
	if len(d.problems) > 0 {
		return Config{}, errors.Join(d.problems...)
	}
	return c.withKindDefaults(), nil
}

type layer struct {
	k      *koanf.Koanf
	source func(key string) string
}

// topLevelKeys are the keys an environment variable may start with.
var topLevelKeys = knownKeys(reflect.TypeFor[Config]())

// envTransform maps HERALD_KINDS__BILLING__TYPE to kinds.billing.type and
// records each key's variable name in names.
func envTransform(names map[string]string) func(k, v string) (string, any) {
	return func(name, value string) (string, any) {
		key := strings.ToLower(strings.TrimPrefix(name, EnvPrefix))
		top, _, _ := strings.Cut(key, "__")
		if !slices.Contains(topLevelKeys, top) {
			return "", nil
		}
		key = strings.ReplaceAll(key, "__", ".")
		names[key] = name
		return key, value
	}
}

// knownKeys lists the keys a struct type accepts, from its koanf tags.
func knownKeys(t reflect.Type) []string {
	var keys []string
	for f := range t.Fields() {
		if key, _ := fieldKey(f); key != "" {
			keys = append(keys, key)
		}
	}
	return keys
}

// decoder writes a koanf map onto a Config. Unlike a generic decoder it
// knows the config's rules: durations need Go syntax, unknown keys are
// errors, and every problem is collected with its key and source.
type decoder struct {
	source   func(key string) string
	problems []error
}

func (d *decoder) fail(key, format string, args ...any) {
	d.problems = append(d.problems, &FieldError{Key: key, Problem: fmt.Sprintf(format, args...), Source: d.source(key)})
}

func join(key, name string) string {
	if key == "" {
		return name
	}
	return key + "." + name
}

// decode sets out from in. A nil in (an empty YAML value) leaves out as it
// was, like an absent key.
func (d *decoder) decode(key string, in any, out reflect.Value) {
	if in == nil {
		return
	}
	if out.Type() == durationType {
		d.decodeDuration(key, in, out)
		return
	}
	switch out.Kind() {
	case reflect.String:
		switch v := in.(type) {
		case string:
			out.SetString(v)
		case int, int64, uint64, float64, bool:
			// YAML reads `X-Version: 2` as a number; the user meant text.
			out.SetString(fmt.Sprint(v))
		default:
			d.fail(key, "expected a string, got %s", describe(in))
		}
	case reflect.Int, reflect.Int64:
		n, ok := toInt(in)
		if !ok {
			d.fail(key, "expected an integer, got %s", describe(in))
			return
		}
		out.SetInt(n)
	case reflect.Float64:
		f, ok := toFloat(in)
		if !ok {
			d.fail(key, "expected a number, got %s", describe(in))
			return
		}
		out.SetFloat(f)
	case reflect.Bool:
		switch v := in.(type) {
		case bool:
			out.SetBool(v)
		case string:
			b, err := strconv.ParseBool(strings.TrimSpace(v))
			if err != nil {
				d.fail(key, "expected true or false, got %q", v)
				return
			}
			out.SetBool(b)
		default:
			d.fail(key, "expected true or false, got %s", describe(in))
		}
	case reflect.Slice:
		d.decodeSlice(key, in, out)
	case reflect.Map:
		d.decodeMap(key, in, out)
	case reflect.Pointer:
		m, ok := in.(map[string]any)
		if !ok {
			d.fail(key, "expected a mapping, got %s", describe(in))
			return
		}
		p := reflect.New(out.Type().Elem())
		if !out.IsNil() {
			p.Elem().Set(out.Elem())
		}
		d.decode(key, m, p.Elem())
		out.Set(p)
	case reflect.Struct:
		d.decodeStruct(key, in, out)
	default:
		panic(fmt.Sprintf("config: no decoding for %s at %q", out.Type(), key))
	}
}

func (d *decoder) decodeDuration(key string, in any, out reflect.Value) {
	switch v := in.(type) {
	case time.Duration:
		out.SetInt(int64(v))
	case string:
		dur, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			d.fail(key, "invalid duration %q: use Go syntax such as 1.5s, 30s or 1h30m", v)
			return
		}
		out.SetInt(int64(dur))
	default:
		if f, ok := toFloat(in); ok && f == 0 {
			out.SetInt(0)
			return
		}
		d.fail(key, "expected a duration with a unit such as 30s, got %s", describe(in))
	}
}

func (d *decoder) decodeSlice(key string, in any, out reflect.Value) {
	var items []any
	switch v := in.(type) {
	case []any:
		items = v
	case []string: // a string-slice flag
		for _, s := range v {
			items = append(items, s)
		}
	case string: // an environment variable: comma-separated
		for s := range strings.SplitSeq(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				items = append(items, s)
			}
		}
	default:
		d.fail(key, "expected a list, got %s", describe(in))
		return
	}
	s := reflect.MakeSlice(out.Type(), len(items), len(items))
	for i, item := range items {
		if item == nil {
			d.fail(fmt.Sprintf("%s[%d]", key, i), "expected a value, got null")
			continue
		}
		d.decode(fmt.Sprintf("%s[%d]", key, i), item, s.Index(i))
	}
	out.Set(s)
}

func (d *decoder) decodeMap(key string, in any, out reflect.Value) {
	m, ok := in.(map[string]any)
	if !ok {
		d.fail(key, "expected a mapping, got %s", describe(in))
		return
	}
	if out.IsNil() {
		out.Set(reflect.MakeMap(out.Type()))
	}
	for _, name := range sortedMapKeys(m) {
		// Decode onto the existing entry, so a layer that sets one field of
		// kinds.noop keeps the rest.
		elem := reflect.New(out.Type().Elem()).Elem()
		if old := out.MapIndex(reflect.ValueOf(name)); old.IsValid() {
			elem.Set(old)
		}
		d.decode(join(key, name), m[name], elem)
		out.SetMapIndex(reflect.ValueOf(name), elem)
	}
}

func (d *decoder) decodeStruct(key string, in any, out reflect.Value) {
	m, ok := in.(map[string]any)
	if !ok {
		d.fail(key, "expected a mapping, got %s", describe(in))
		return
	}
	fields := make(map[string]int, out.NumField())
	for i := range out.NumField() {
		if key, _ := fieldKey(out.Type().Field(i)); key != "" {
			fields[key] = i
		}
	}
	for _, name := range sortedMapKeys(m) {
		i, ok := fields[name]
		if !ok {
			problem := "unknown key"
			if s := suggest(name, knownKeys(out.Type())); s != "" {
				problem += fmt.Sprintf("; did you mean %q?", s)
			}
			d.fail(join(key, name), "%s", problem)
			continue
		}
		d.decode(join(key, name), m[name], out.Field(i))
	}
}

func toInt(in any) (int64, bool) {
	switch v := in.(type) {
	case int:
		return int64(v), true
	case int64:
		return v, true
	case uint64:
		if v > math.MaxInt64 {
			return 0, false
		}
		return int64(v), true
	case float64:
		if v != math.Trunc(v) || v < math.MinInt64 || v >= math.MaxInt64 {
			return 0, false
		}
		return int64(v), true
	case string:
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		return n, err == nil
	}
	return 0, false
}

func toFloat(in any) (float64, bool) {
	switch v := in.(type) {
	case int:
		return float64(v), true
	case int64:
		return float64(v), true
	case uint64:
		return float64(v), true
	case float64:
		return v, true
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		return f, err == nil
	}
	return 0, false
}

// describe names a value's YAML shape for an error message.
func describe(in any) string {
	switch v := in.(type) {
	case string:
		return strconv.Quote(v)
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	case bool, int, int64, uint64, float64:
		return fmt.Sprint(v)
	}
	return fmt.Sprintf("a %T", in)
}

// suggest returns the known key closest to name when it is close enough to
// be a typo, or "".
func suggest(name string, known []string) string {
	best, bestDist := "", math.MaxInt
	for _, k := range known {
		if d := editDistance(name, k); d <= max(1, len(k)/3) && d < bestDist {
			best, bestDist = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
