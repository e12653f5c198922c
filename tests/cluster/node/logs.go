package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"sync"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	v1 "k8s.io/api/core/v1"
)

// lineLog writes a container's output (stdout and stderr, interleaved) to its
// log file as a CRI runtime does: one entry per line, "TIMESTAMP F TEXT\n",
// the time it arrived in RFC3339Nano; output that does not end a line is
// written at once as a partial entry, "TIMESTAMP P TEXT\n", which the next
// entry continues. So the node can serve `timestamps` and `sinceTime`, which
// clients use to resume a log whose stream broke (an API server restart).
type lineLog struct {
	mu sync.Mutex
	f  *os.File
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ts := time.Now().UTC().Format(time.RFC3339Nano)
	var buf []byte
	for rest := p; len(rest) > 0; {
		text, tag := rest, byte('P')
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			text, tag = rest[:i], 'F'
			rest = rest[i+1:]
		} else {
			rest = nil
		}
		buf = append(buf, ts...)
		buf = append(buf, ' ', tag, ' ')
		buf = append(buf, text...)
		buf = append(buf, '\n')
	}
	if _, err := l.f.Write(buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

// logView renders log entries for one request: the timestamp once per line
// (that of its first entry) when asked, sinceTime/sinceSeconds applied to
// whole lines.
type logView struct {
	since      time.Time
	timestamps bool
	midline    bool // the last entry was partial
	skipping   bool // the line under way started before since
}

func newLogView(opts api.ContainerLogOpts) *logView {
	v := &logView{timestamps: opts.Timestamps}
	if !opts.SinceTime.IsZero() {
		v.since = opts.SinceTime
	}
	if opts.SinceSeconds > 0 {
		v.since = time.Now().Add(-time.Duration(opts.SinceSeconds) * time.Second)
	}
	return v
}

// render: what the stored entry (with its newline) adds to the output.
func (v *logView) render(entry []byte) []byte {
	entry = bytes.TrimSuffix(entry, []byte("\n"))
	f := bytes.SplitN(entry, []byte(" "), 3)
	if len(f) < 3 || len(f[1]) != 1 {
		return nil
	}
	ts, tag, text := f[0], f[1][0], f[2]
	start := !v.midline
	v.midline = tag == 'P'
	if start {
		v.skipping = false
		if !v.since.IsZero() {
			if t, err := time.Parse(time.RFC3339Nano, string(ts)); err == nil && t.Before(v.since) {
				v.skipping = true
			}
		}
	}
	if v.skipping {
		return nil
	}
	var out []byte
	if start && v.timestamps {
		out = append(append(out, ts...), ' ')
	}
	out = append(out, text...)
	if tag == 'F' {
		out = append(out, '\n')
	}
	return out
}

// tail: the last n lines of out (a last line without its newline counts).
func tail(out []byte, n int) []byte {
	if n <= 0 {
		return out
	}
	end := len(out)
	if end > 0 && out[end-1] == '\n' {
		end--
	}
	for i := end - 1; i >= 0; i-- {
		if out[i] == '\n' {
			n--
			if n == 0 {
				return out[i+1:]
			}
		}
	}
	return out
}

// GetContainerLogs serves a container's log as a kubelet does: tailLines,
// sinceTime/sinceSeconds, timestamps, and follow until the container ended.
func (p *provider) GetContainerLogs(ctx context.Context, ns, podName, name string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	ps, c, err := p.container(ns, podName, name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(c.logPath)
	if err != nil {
		if os.IsNotExist(err) {
			return io.NopCloser(bytes.NewReader(nil)), nil
		}
		return nil, err
	}
	view := newLogView(opts)
	r := bufio.NewReader(f)
	// Entries are written whole; one being written waits for the next read.
	var head, pending []byte
	for {
		b, err := r.ReadBytes('\n')
		if err != nil {
			pending = b
			break
		}
		head = append(head, view.render(b)...)
	}
	head = tail(head, opts.Tail)
	if !opts.Follow {
		f.Close()
		return io.NopCloser(bytes.NewReader(head)), nil
	}
	pr, pw := io.Pipe()
	go func() {
		defer f.Close()
		if _, err := pw.Write(head); err != nil {
			return
		}
		// drain sends the entries written since the last read; false when the reader left.
		drain := func() (bool, error) {
			for {
				b, err := r.ReadBytes('\n')
				pending = append(pending, b...)
				if err != nil {
					return true, err
				}
				if out := view.render(pending); len(out) > 0 {
					if _, werr := pw.Write(out); werr != nil {
						return false, nil
					}
				}
				pending = nil
			}
		}
		for {
			ok, err := drain()
			if !ok {
				return
			}
			if err != io.EOF {
				pw.CloseWithError(err)
				return
			}
			ps.mu.Lock()
			gone := ps.deleted || (c.status.State.Running == nil && (ps.pod.Status.Phase == v1.PodSucceeded || ps.pod.Status.Phase == v1.PodFailed))
			ps.mu.Unlock()
			if gone {
				// What the container wrote between the last read and its end.
				drain()
				pw.Close()
				return
			}
			select {
			case <-ctx.Done():
				pw.Close()
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return pr, nil
}
