package herald_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/heraldmq/herald"
)

// A client with one kind: enqueue a job, let the handler run it, stop.
func ExampleClient() {
	dir, err := os.MkdirTemp("", "herald-example-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir) //nolint:errcheck // best-effort cleanup of a temp dir

	client, err := herald.New(herald.Config{DataDir: dir})
	if err != nil {
		panic(err)
	}
	greetings := make(chan string, 1)
	err = client.Register("greet", herald.HandlerFunc(func(ctx context.Context, job *herald.Job) error {
		var p struct{ Name string }
		if err := json.Unmarshal(job.Payload, &p); err != nil {
			return herald.Permanent(err) // retrying cannot fix a bad payload
		}
		greetings <- fmt.Sprintf("hello, %s (key %s, attempt %d)", p.Name, job.Key, job.Attempt)
		return nil
	}), herald.KindConfig{MaxAttempts: 5})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	if err := client.Start(ctx); err != nil {
		panic(err)
	}

	// Enqueue returns once the job is on disk.
	res, err := client.Enqueue(ctx, herald.EnqueueParams{
		Kind:    "greet",
		Key:     "account-42", // jobs of one key run one at a time, in order
		Payload: map[string]string{"name": "Ada"},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println("enqueued, state:", res.Job.State)
	fmt.Println(<-greetings) // the handler ran

	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := client.Stop(stopCtx); err != nil { // waits for running jobs
		panic(err)
	}
	// Output:
	// enqueued, state: available
	// hello, Ada (key account-42, attempt 1)
}
