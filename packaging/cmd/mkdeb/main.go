// Command mkdeb builds tai-sidecar's Debian package from a built binary.
//
//	mkdeb --binary ./tai-sidecar --version 1.2.3 [--arch amd64] [--out DIR]
//
// It writes DIR/tai-sidecar_VERSION_ARCH.deb and prints its path. File times
// come from SOURCE_DATE_EPOCH when it is set, so that builds are reproducible.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"

	"github.com/tai-state/tai-state/packaging/deb"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "mkdeb:", err)
		}
		var ue *usageError
		if errors.As(err, &ue) || errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError is a bad command line (exit status 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func run(_ context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := flag.NewFlagSet("mkdeb", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o deb.Options
	out := "."
	fs.StringVar(&o.Binary, "binary", "", "tai-sidecar binary to package (required)")
	fs.StringVar(&o.Version, "version", "", "package version, e.g. 1.2.3 (required)")
	fs.StringVar(&o.Arch, "arch", runtime.GOARCH, "GOARCH the binary was built for")
	fs.StringVar(&o.Maintainer, "maintainer", deb.DefaultMaintainer, "Maintainer field")
	fs.StringVar(&out, "out", out, "directory to write the package to")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{err.Error()}
	}
	switch {
	case fs.NArg() > 0:
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	case o.Binary == "":
		return &usageError{"--binary is required"}
	case o.Version == "":
		return &usageError{"--version is required"}
	}
	name, err := deb.FileName(o)
	if err != nil {
		return &usageError{err.Error()}
	}
	path := filepath.Join(out, name)
	tmp, err := os.CreateTemp(out, "."+name+".*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := deb.Build(tmp, o); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	fmt.Fprintln(stdout, path)
	return nil
}
