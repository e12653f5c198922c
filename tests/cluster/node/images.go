package main

import (
	"os"
	"strings"

	"github.com/virtual-kubelet/virtual-kubelet/log"
)

// entrypoint: the command of an image, from the node's image file (--images):
// one image per line, `REPOSITORY ENTRYPOINT [ARGS...]` (whitespace separated,
// `#` comments), REPOSITORY matching the image without its tag or digest. The
// file is read at every pod start, so a test run can fill it after the node
// started. It stands for an image's ENTRYPOINT, which a node that runs host
// processes cannot read from an image it does not pull.
func (p *provider) entrypoint(image string) []string {
	if p.images == "" {
		return nil
	}
	data, err := os.ReadFile(p.images)
	if err != nil {
		if !os.IsNotExist(err) {
			log.L.Warnf("image file %s: %v", p.images, err)
		}
		return nil
	}
	repo := image
	if i := strings.Index(repo, "@"); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") && f[0] == repo {
			return f[1:]
		}
	}
	return nil
}
