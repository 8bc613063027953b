package tessera

import "tessera/internal/wit/imports/wasi_config_store"

// The service's configuration: the manifest's [services.NAME.config] values (with the
// selected environment's overrides) and the service's secrets (tessera secret set).

// ConfigError is a configuration that could not be read. Kind is "upstream" or "io".
type ConfigError struct {
	Kind    string
	Message string
}

func (e *ConfigError) Error() string { return "config: " + e.Kind + ": " + e.Message }

func configError(e wasi_config_store.Error) error {
	if e.Tag() == wasi_config_store.Error_Upstream {
		return &ConfigError{Kind: "upstream", Message: e.Upstream()}
	}
	return &ConfigError{Kind: "io", Message: e.Io()}
}

// Config returns the value of a configuration key or secret; ok is false if it is not
// set.
func Config(key string) (value string, ok bool, err error) {
	res := wasi_config_store.Get(key)
	if res.IsErr() {
		return "", false, configError(res.Err())
	}
	if v := res.Ok(); v.IsSome() {
		return v.Some(), true, nil
	}
	return "", false, nil
}

// ConfigAll returns every configuration key and value.
func ConfigAll() (map[string]string, error) {
	res := wasi_config_store.GetAll()
	if res.IsErr() {
		return nil, configError(res.Err())
	}
	all := make(map[string]string, len(res.Ok()))
	for _, kv := range res.Ok() {
		all[kv.F0] = kv.F1
	}
	return all, nil
}
