// Command tarcopy reads a tar stream on stdin with Go's archive/tar and writes every
// header and its data back to stdout with archive/tar. The tests compare the output
// with the input byte for byte: equal bytes mean ocilayer encodes headers as Go does.
// With -list it prints one JSON object per entry instead, for header assertions.
package main

import (
	"archive/tar"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
)

type listed struct {
	Name       []byte            `json:"name"`
	Linkname   []byte            `json:"linkname"`
	Typeflag   string            `json:"typeflag"`
	Mode       int64             `json:"mode"`
	Uid        int               `json:"uid"`
	Gid        int               `json:"gid"`
	Size       int64             `json:"size"`
	ModTimeNs  int64             `json:"mtime_ns"`
	Devmajor   int64             `json:"devmajor"`
	Devminor   int64             `json:"devminor"`
	Format     string            `json:"format"`
	PAXRecords map[string][]byte `json:"pax"`
}

func main() {
	list := flag.Bool("list", false, "print the headers as JSON lines instead of copying")
	flag.Parse()
	if err := run(*list); err != nil {
		fmt.Fprintln(os.Stderr, "tarcopy:", err)
		os.Exit(1)
	}
}

func run(list bool) error {
	tr := tar.NewReader(os.Stdin)
	tw := tar.NewWriter(os.Stdout)
	enc := json.NewEncoder(os.Stdout)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if list {
			pax := map[string][]byte{}
			for k, v := range hdr.PAXRecords {
				pax[k] = []byte(v)
			}
			item := listed{
				Name: []byte(hdr.Name), Linkname: []byte(hdr.Linkname),
				Typeflag: string([]byte{hdr.Typeflag}), Mode: hdr.Mode, Uid: hdr.Uid,
				Gid: hdr.Gid, Size: hdr.Size, ModTimeNs: hdr.ModTime.UnixNano(),
				Devmajor: hdr.Devmajor, Devminor: hdr.Devminor,
				Format: hdr.Format.String(), PAXRecords: pax,
			}
			if err := enc.Encode(item); err != nil {
				return err
			}
			if _, err := io.Copy(io.Discard, tr); err != nil {
				return err
			}
			continue
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("write header %q: %w", hdr.Name, err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return fmt.Errorf("copy data of %q: %w", hdr.Name, err)
		}
	}
	if list {
		return nil
	}
	return tw.Close()
}
