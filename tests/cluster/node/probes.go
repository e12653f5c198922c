// Probes on the test node: a container with a readinessProbe is Ready only
// while the probe passes; a failing livenessProbe kills the container's
// processes, and its restartPolicy decides what follows. exec, tcpSocket and
// httpGet and grpc (grpc.health.v1, plaintext, as the kubelet) probes run as
// a kubelet runs them (periodSeconds, timeoutSeconds, initialDelaySeconds,
// successThreshold, failureThreshold and their defaults).
package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probe runs pr every period until ctx ends (the container's run ended).
// onResult gets each change of the probe's verdict.
func (p *provider) probe(ctx context.Context, ps *podState, c *ctr, pr *v1.Probe, onResult func(ok bool, msg string)) {
	period := secs(pr.PeriodSeconds, 10)
	timeout := secs(pr.TimeoutSeconds, 1)
	success := int(max(pr.SuccessThreshold, 1))
	failure := int(max(pr.FailureThreshold, 3))
	if !sleepCtx(ctx, secs(pr.InitialDelaySeconds, 0)) {
		return
	}
	okRun, failRun := 0, 0
	verdict := 0 // 0 unknown, 1 passing, -1 failing
	for {
		err := p.probeOnce(ctx, ps, c, pr, timeout)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			okRun, failRun = okRun+1, 0
			if okRun >= success && verdict != 1 {
				verdict = 1
				onResult(true, "")
			}
		} else {
			okRun, failRun = 0, failRun+1
			if failRun >= failure && verdict != -1 {
				verdict = -1
				onResult(false, err.Error())
			}
		}
		if !sleepCtx(ctx, period) {
			return
		}
	}
}

func secs(v int32, def int32) time.Duration {
	if v <= 0 {
		v = def
	}
	return time.Duration(v) * time.Second
}

// probeOnce: nil when the probe passes.
func (p *provider) probeOnce(ctx context.Context, ps *podState, c *ctr, pr *v1.Probe, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ps.mu.Lock()
	env := c.env
	ps.mu.Unlock()
	port := func(ip intstr.IntOrString) (int32, error) {
		if ip.Type == intstr.Int {
			return ip.IntVal, nil
		}
		for _, cp := range c.spec.Ports {
			if cp.Name == ip.StrVal {
				return cp.ContainerPort, nil
			}
		}
		return 0, fmt.Errorf("no container port named %q", ip.StrVal)
	}
	host := func(h string) string {
		if h == "" {
			return ps.ip
		}
		return h
	}
	switch {
	case pr.Exec != nil:
		if len(pr.Exec.Command) == 0 {
			return fmt.Errorf("exec probe without a command")
		}
		cmd := p.command(ctx, ps, c, pr.Exec.Command, env)
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("exec probe %v: %v: %s", pr.Exec.Command, err, strings.TrimSpace(string(out)))
		}
		return nil
	case pr.TCPSocket != nil:
		n, err := port(pr.TCPSocket.Port)
		if err != nil {
			return err
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host(pr.TCPSocket.Host), fmt.Sprint(n)))
		if err != nil {
			return err
		}
		return conn.Close()
	case pr.HTTPGet != nil:
		g := pr.HTTPGet
		n, err := port(g.Port)
		if err != nil {
			return err
		}
		scheme := "http"
		if g.Scheme == v1.URISchemeHTTPS {
			scheme = "https"
		}
		path := g.Path
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet,
			fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host(g.Host), fmt.Sprint(n)), path), nil)
		if err != nil {
			return err
		}
		for _, h := range g.HTTPHeaders {
			req.Header.Add(h.Name, h.Value)
		}
		// As the kubelet: HTTPS without certificate verification, redirects not followed to other hosts.
		client := http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe %s: status %d", req.URL, resp.StatusCode)
		}
		return nil
	case pr.GRPC != nil:
		conn, err := grpc.NewClient(net.JoinHostPort(ps.ip, fmt.Sprint(pr.GRPC.Port)),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		service := ""
		if pr.GRPC.Service != nil {
			service = *pr.GRPC.Service
		}
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			return fmt.Errorf("gRPC probe: %v", err)
		}
		if resp.Status != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("gRPC probe: service %q is %v", service, resp.Status)
		}
		return nil
	default:
		return fmt.Errorf("a probe without a handler")
	}
}
