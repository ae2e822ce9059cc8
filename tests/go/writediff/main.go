// Command writediff writes containerd's layer tar for the changes from LOWER to UPPER
// to stdout, by calling archive.WriteDiff from the containerd sources that Debian
// packages (containerd 1.6 in bookworm). The tests use it as the oracle that ocilayer's
// export must match byte for byte.
//
// Usage: writediff LOWER UPPER
//
// An empty LOWER makes containerd walk UPPER alone, as for a base layer.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/archive"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: writediff LOWER UPPER (LOWER may be empty for a base layer)")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "writediff:", err)
		os.Exit(1)
	}
}

func run(lower, upper string) error {
	// containerd compares joined paths with the upper path verbatim, so an upper path
	// with a trailing slash would make it emit the layer root as "./". Clean both.
	upper, err := filepath.Abs(upper)
	if err != nil {
		return fmt.Errorf("resolve upper %q: %w", upper, err)
	}
	if lower != "" {
		if lower, err = filepath.Abs(lower); err != nil {
			return fmt.Errorf("resolve lower %q: %w", lower, err)
		}
	}
	for _, dir := range []string{lower, upper} {
		if dir == "" {
			continue
		}
		if info, err := os.Stat(dir); err != nil {
			return err
		} else if !info.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
	}
	return archive.WriteDiff(context.Background(), os.Stdout, lower, upper)
}
