package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tai-state/tai-state/localcache"
)

const newIncarnationUsage = `Usage: tai-sidecar new-incarnation [--data-dir DIR]

Gives the local store in DIR a new incarnation: from now on its changes carry
a new origin (node id~incarnation), told apart from those of the store it was
copied from. Run it once on a data dir restored from a copy (a volume
snapshot, a backup) before a sidecar serves it, while no sidecar runs on it:
without it, the restored store counts its changes again from where the copy
stood, under the origin the copied store went on using, and the shared store
takes its new changes for ones it already has and drops them.

Changes the copy still had to push keep their origin: the shared store
recognises the ones it has. Prints the node id, the new origin and the one
before as JSON.

Flags:
  --data-dir DIR   the data dir (env TAI_DATA_DIR, default ./tai-data)
`

// runNewIncarnation is `tai-sidecar new-incarnation`: it opens the store in
// the data dir with localcache.Options.NewIncarnation, offline.
func runNewIncarnation(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fset := flag.NewFlagSet("tai-sidecar new-incarnation", flag.ContinueOnError)
	fset.SetOutput(stderr)
	fset.Usage = func() { fmt.Fprint(stderr, newIncarnationUsage) }
	dir := fset.String("data-dir", envOr(getenv, "TAI_DATA_DIR", "./tai-data"), "the data dir")
	if err := parseCommand(fset, "new-incarnation", args); err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(*dir, nodeIDFile))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("new-incarnation: %s holds no store (no %s file)", *dir, nodeIDFile)
	}
	if err != nil {
		return fmt.Errorf("new-incarnation: %w", err)
	}
	nodeID := strings.TrimSpace(string(b))
	before, err := storeOrigin(*dir, nodeID, false)
	if err != nil {
		return err
	}
	after, err := storeOrigin(*dir, nodeID, true)
	if err != nil {
		return err
	}
	out, err := json.Marshal(map[string]string{"node_id": nodeID, "origin": after, "was": before})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", out)
	return err
}

// storeOrigin opens the store in dir, drawing a new incarnation when asked,
// and returns its origin.
func storeOrigin(dir, nodeID string, renew bool) (string, error) {
	store, err := localcache.Open(localcache.Options{Dir: filepath.Join(dir, "badger"), NodeID: nodeID, NewIncarnation: renew})
	if err != nil {
		return "", fmt.Errorf("new-incarnation: open the store in %s (a sidecar running on it must be stopped first): %w", dir, err)
	}
	origin := store.Origin()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := store.Close(ctx); err != nil {
		return "", fmt.Errorf("new-incarnation: close the store: %w", err)
	}
	return origin, nil
}
