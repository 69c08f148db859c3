package config_test

import (
	"fmt"

	"github.com/heraldmq/herald/internal/config"
)

// A file sets the listen address and a webhook kind; the environment raises
// the workers. Secrets stay hidden in what is shown.
func ExampleLoad() {
	environ := []string{"HERALD_WORKERS=64", "HERALD_KINDS__BILLING__MAX_ATTEMPTS=5"}
	c, err := config.Load("testdata/example.yaml", environ, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := c.Validate(); err != nil {
		fmt.Println(err)
		return
	}
	billing := c.Kinds["billing"]
	fmt.Println("listen:", c.Listen, "workers:", c.Workers)
	fmt.Println("billing:", billing.Type, billing.Concurrency, billing.MaxAttempts, billing.Timeout, billing.Webhook.Method)
	fmt.Println("secret shown as:", c.Redacted().Kinds["billing"].Webhook.Secret)
	fmt.Println("built-in kinds:", c.Kinds["noop"].Type, c.Kinds["sleep"].Type)
	// Output:
	// listen: 127.0.0.1:9090 workers: 64
	// billing: webhook 20 5 1.5s POST
	// secret shown as: REDACTED
	// built-in kinds: noop sleep
}
