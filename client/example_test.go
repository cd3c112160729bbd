package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/tai-state/tai-state/client"
)

func Example() {
	c := client.New("/run/tai/tai.sock")
	defer c.Close()
	ctx := context.Background()

	type Order struct {
		Status string `codec:"status"`
		Total  int    `codec:"total"`
	}
	rec, err := c.Put(ctx, "orders", "o-17", Order{Status: "paid", Total: 42},
		client.IfAbsent(), client.Actor("billing"), client.Reason("checkout"))
	if err != nil {
		log.Fatal(err)
	}
	// Update it only if nobody changed it since.
	_, err = c.Put(ctx, "orders", "o-17", Order{Status: "shipped", Total: 42}, client.IfVersion(rec.Version))
	var e *client.Error
	switch {
	case errors.Is(err, client.ErrVersionConflict) && errors.As(err, &e):
		fmt.Printf("someone else wrote version %d first\n", *e.Actual)
	case errors.Is(err, client.ErrUnavailable):
		fmt.Println("the sidecar is not running")
	case err != nil:
		log.Fatal(err)
	}

	got, err := c.Get(ctx, "orders", "o-17")
	if err != nil {
		log.Fatal(err)
	}
	var o Order
	if err := got.Decode(&o); err != nil {
		log.Fatal(err)
	}
	fmt.Println(o.Status, got.Version, got.Pending)
}

func ExampleClient_ListAll() {
	var c client.Client // the zero value talks to ./tai.sock
	defer c.Close()
	for rec, err := range c.ListAll(context.Background(), "orders", client.ListOptions{Prefix: "o-"}) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(rec.State, rec.Version)
	}
}
