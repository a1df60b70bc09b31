package config

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
)

// EnvPrefix starts every configuration variable.
const EnvPrefix = "WEFT_"

// envIgnoredPrefixes are WEFT_ variables that are not configuration keys and
// so are not rejected as unknown.
var envIgnoredPrefixes = []string{"WEFT_TEST_", "WEFT_CONFIG"}

// envField is one scalar configuration key reachable from the environment.
type envField struct {
	key  string // YAML path, e.g. database.url
	path []int  // reflect field index path from Config
}

// envNames lists every scalar key with its environment variable name. Lists
// of structs (support.contacts) are file-only.
func envNames() map[string]envField {
	out := map[string]envField{}
	var walk func(t reflect.Type, prefix []string, idx []int)
	walk = func(t reflect.Type, prefix []string, idx []int) {
		for i := range t.NumField() {
			f := t.Field(i)
			name := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if name == "" || name == "-" {
				continue
			}
			path := append(append([]string{}, prefix...), name)
			fidx := append(append([]int{}, idx...), i)
			if f.Type.Kind() == reflect.Struct {
				walk(f.Type, path, fidx)
				continue
			}
			if f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct {
				continue
			}
			env := EnvPrefix + strings.ToUpper(strings.Join(path, "_"))
			out[env] = envField{key: strings.Join(path, "."), path: fidx}
		}
	}
	walk(reflect.TypeFor[Config](), nil, nil)
	return out
}

// EnvVariables returns the sorted environment variable names, for docs and tests.
func EnvVariables() []string {
	names := envNames()
	out := make([]string, 0, len(names))
	for k := range names {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// applyEnv overlays WEFT_* variables. An unknown WEFT_ variable is an error
// (it is almost always a typo that would silently do nothing).
func applyEnv(cfg *Config, environ []string) error {
	names := envNames()
	root := reflect.ValueOf(cfg).Elem()
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) || ignoredEnv(name) {
			continue
		}
		f, known := names[name]
		if !known {
			return fmt.Errorf("environment variable %s is not a Weft setting (see config.sample.yaml for the keys; WEFT_ + key path in capitals)", name)
		}
		if err := setScalar(root.FieldByIndex(f.path), value); err != nil {
			return fmt.Errorf("environment variable %s (config key %s): %w", name, f.key, err)
		}
	}
	return nil
}

func ignoredEnv(name string) bool {
	for _, p := range envIgnoredPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func setScalar(v reflect.Value, s string) error {
	if v.Type() == reflect.TypeFor[Duration]() {
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration like 30s or 5m", s)
		}
		v.SetInt(int64(d))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not true or false", s)
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", s)
		}
		v.SetInt(n)
	case reflect.Float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", s)
		}
		v.SetFloat(f)
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.String {
			return fmt.Errorf("cannot be set from the environment")
		}
		var parts []string
		for p := range strings.SplitSeq(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		v.Set(reflect.ValueOf(parts))
	default:
		return fmt.Errorf("cannot be set from the environment")
	}
	return nil
}
