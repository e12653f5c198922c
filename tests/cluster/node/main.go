// Test tooling only, never shipped: a virtual-kubelet node for the test
// cluster that runs each pod's containers as host processes (no images, no
// isolation). See ../README.md for what it does and does not do.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/sirupsen/logrus"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/log"
	logruslogger "github.com/virtual-kubelet/virtual-kubelet/log/logrus"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	authv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
	utilexec "k8s.io/utils/exec"
)

var version = "v1.37.2"

type ctr struct {
	spec    v1.Container
	init    bool
	env     []string
	argv    []string
	logPath string
	binds   string // file of the volume binds its processes get (podExec)
	status  v1.ContainerStatus
	proc    *os.Process
}

type podState struct {
	mu      sync.Mutex
	pod     *v1.Pod
	ip      string
	dir     string // per-pod root: cwd and HOME of every process
	hosts   string // the /etc/hosts its processes see (services.go)
	ctrs    []*ctr
	byName  map[string]*ctr
	deleted bool
	cancel  context.CancelFunc
	done    chan struct{}
}

type provider struct {
	name       string
	root       string
	apiHost    string
	apiPort    string
	client     kubernetes.Interface
	self       string    // this binary, started as `pod-exec` for every pod process
	images     string    // file: image repository -> entrypoint (entrypoint in images.go)
	svc        *services // Service names and proxies (services.go)
	secrets    corev1listers.SecretLister
	configMaps corev1listers.ConfigMapLister

	mu     sync.Mutex
	pods   map[string]*podState // ns/name
	ips    map[string]string    // ip -> ns/name
	notify func(*v1.Pod)
}

func key(ns, name string) string { return ns + "/" + name }

func (p *provider) NotifyPods(_ context.Context, cb func(*v1.Pod)) {
	p.mu.Lock()
	p.notify = cb
	p.mu.Unlock()
}

func (p *provider) push(ps *podState) {
	ps.mu.Lock()
	pod := ps.snapshot()
	ps.mu.Unlock()
	p.mu.Lock()
	cb := p.notify
	p.mu.Unlock()
	if cb != nil {
		cb(pod)
	}
	if p.svc != nil {
		p.svc.changed()
	}
}

// command: a pod process; it runs in a mount namespace of its own where the
// pod's hosts file is /etc/hosts (podExec in services.go), in the pod root.
func (p *provider) command(ctx context.Context, ps *podState, c *ctr, argv []string, env []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, p.self, append([]string{"pod-exec", ps.hosts, c.binds, "--"}, argv...)...)
	cmd.Env = env
	cmd.Dir = ps.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Unshareflags: syscall.CLONE_NEWNS}
	return cmd
}

// missing: a command name (no slash) that is on no directory of the container's
// PATH (env), which puts the image's directory before the node's.
func missing(name string, env []string) error {
	if strings.Contains(name, "/") {
		return nil
	}
	path := ""
	for _, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			path = kv[len("PATH="):]
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		if fi, err := os.Stat(filepath.Join(dir, name)); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return nil
		}
	}
	return fmt.Errorf("exec: %q: executable file not found in $PATH", name)
}

// snapshot: the pod with its current status; ps.mu held.
func (ps *podState) snapshot() *v1.Pod {
	pod := ps.pod.DeepCopy()
	pod.Status.InitContainerStatuses = nil
	pod.Status.ContainerStatuses = nil
	allReady := true
	for _, c := range ps.ctrs {
		s := *c.status.DeepCopy()
		if c.init {
			pod.Status.InitContainerStatuses = append(pod.Status.InitContainerStatuses, s)
		} else {
			pod.Status.ContainerStatuses = append(pod.Status.ContainerStatuses, s)
			if !s.Ready {
				allReady = false
			}
		}
	}
	initialized := true
	for _, c := range ps.ctrs {
		if c.init && (c.status.State.Terminated == nil || c.status.State.Terminated.ExitCode != 0) {
			initialized = false
		}
	}
	now := metav1.Now()
	cond := func(t v1.PodConditionType, ok bool) v1.PodCondition {
		st := v1.ConditionFalse
		if ok {
			st = v1.ConditionTrue
		}
		return v1.PodCondition{Type: t, Status: st, LastTransitionTime: now}
	}
	ready := allReady && pod.Status.Phase == v1.PodRunning && !ps.deleted
	pod.Status.Conditions = []v1.PodCondition{
		cond(v1.PodScheduled, true),
		cond(v1.PodInitialized, initialized),
		cond(v1.ContainersReady, ready),
		cond(v1.PodReady, ready),
	}
	// Keep the transition times stable across updates of the same status.
	for i, c := range pod.Status.Conditions {
		for _, old := range ps.pod.Status.Conditions {
			if old.Type == c.Type && old.Status == c.Status {
				pod.Status.Conditions[i].LastTransitionTime = old.LastTransitionTime
			}
		}
	}
	ps.pod.Status.Conditions = pod.Status.Conditions
	return pod
}

func (p *provider) CreatePod(ctx context.Context, pod *v1.Pod) error {
	k := key(pod.Namespace, pod.Name)
	p.mu.Lock()
	if old, ok := p.pods[k]; ok && old.pod.UID == pod.UID {
		p.mu.Unlock()
		return nil
	}
	ip := ""
	for x := 2; x < 255; x++ {
		c := fmt.Sprintf("127.0.0.%d", x)
		if _, used := p.ips[c]; !used {
			ip = c
			break
		}
	}
	if ip == "" {
		p.mu.Unlock()
		return fmt.Errorf("no free pod address in 127.0.0.2-254")
	}
	p.ips[ip] = k
	ps := &podState{pod: pod.DeepCopy(), ip: ip, byName: map[string]*ctr{}, done: make(chan struct{})}
	ps.dir = filepath.Join(p.root, "pods", pod.Namespace+"_"+pod.Name+"_"+string(pod.UID))
	p.pods[k] = ps
	p.mu.Unlock()

	now := metav1.Now()
	ps.pod.Status = v1.PodStatus{
		Phase: v1.PodPending, HostIP: "127.0.0.1", HostIPs: []v1.HostIP{{IP: "127.0.0.1"}},
		PodIP: ip, PodIPs: []v1.PodIP{{IP: ip}}, StartTime: &now,
	}
	addCtr := func(c v1.Container, init bool) {
		cs := &ctr{spec: c, init: init, logPath: filepath.Join(ps.dir, "logs", c.Name+".log")}
		cs.status = v1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: c.Image,
			State: v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "PodInitializing"}}}
		ps.ctrs = append(ps.ctrs, cs)
		ps.byName[c.Name] = cs
	}
	for _, c := range pod.Spec.InitContainers {
		addCtr(c, true)
	}
	for _, c := range pod.Spec.Containers {
		addCtr(c, false)
	}
	rctx, cancel := context.WithCancel(context.Background())
	ps.cancel = cancel
	go p.run(rctx, ps)
	return nil
}

func (p *provider) UpdatePod(ctx context.Context, pod *v1.Pod) error {
	p.mu.Lock()
	ps := p.pods[key(pod.Namespace, pod.Name)]
	p.mu.Unlock()
	if ps != nil && ps.pod.UID == pod.UID {
		ps.mu.Lock()
		ps.pod.ObjectMeta = *pod.ObjectMeta.DeepCopy()
		ps.mu.Unlock()
	}
	return nil
}

func (p *provider) DeletePod(ctx context.Context, pod *v1.Pod) error {
	k := key(pod.Namespace, pod.Name)
	p.mu.Lock()
	ps := p.pods[k]
	p.mu.Unlock()
	// A StatefulSet's pods reuse their names: a late delete of an earlier pod of this name
	// must not touch the pod that runs under it now.
	if ps == nil || ps.pod.UID != pod.UID {
		return errdefs.NotFoundf("pod %s (uid %s) not found", k, pod.UID)
	}
	grace := int64(30)
	if pod.DeletionGracePeriodSeconds != nil {
		grace = *pod.DeletionGracePeriodSeconds
	} else if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = *pod.Spec.TerminationGracePeriodSeconds
	}
	ps.mu.Lock()
	ps.deleted = true
	ps.mu.Unlock()
	ps.cancel()
	p.killAll(ps, time.Duration(grace)*time.Second)
	<-ps.done
	ps.mu.Lock()
	for _, c := range ps.ctrs {
		if c.status.State.Terminated == nil {
			c.status.State = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{
				ExitCode: 137, Reason: "Killed", FinishedAt: metav1.Now()}}
			c.status.Ready = false
			c.status.Started = ptr(false)
		}
	}
	if ps.pod.Status.Phase != v1.PodSucceeded {
		ps.pod.Status.Phase = v1.PodFailed
		ps.pod.Status.Reason = "Deleted"
	}
	ps.mu.Unlock()
	p.push(ps)
	p.mu.Lock()
	if p.pods[k] == ps {
		delete(p.pods, k)
		delete(p.ips, ps.ip)
	}
	p.mu.Unlock()
	os.RemoveAll(ps.dir)
	// As the kubelet does once a pod's processes are gone: remove it from the
	// API at once. (virtual-kubelet alone waits out the pod's grace period.)
	if pod.DeletionTimestamp != nil {
		go func() {
			opts := metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0)),
				Preconditions: &metav1.Preconditions{UID: &pod.UID}}
			time.Sleep(100 * time.Millisecond)
			err := p.client.CoreV1().Pods(pod.Namespace).Delete(context.Background(), pod.Name, opts)
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				log.L.Warnf("deleting pod %s from the API: %v", k, err)
			}
		}()
	}
	return nil
}

func (p *provider) lookup(ns, name string) (*podState, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ps := p.pods[key(ns, name)]
	if ps == nil {
		return nil, errdefs.NotFoundf("pod %s/%s not found", ns, name)
	}
	return ps, nil
}

func (p *provider) GetPod(ctx context.Context, ns, name string) (*v1.Pod, error) {
	ps, err := p.lookup(ns, name)
	if err != nil {
		return nil, err
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.snapshot(), nil
}

func (p *provider) GetPodStatus(ctx context.Context, ns, name string) (*v1.PodStatus, error) {
	pod, err := p.GetPod(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

func (p *provider) GetPods(ctx context.Context) ([]*v1.Pod, error) {
	p.mu.Lock()
	all := make([]*podState, 0, len(p.pods))
	for _, ps := range p.pods {
		all = append(all, ps)
	}
	p.mu.Unlock()
	out := make([]*v1.Pod, 0, len(all))
	for _, ps := range all {
		ps.mu.Lock()
		out = append(out, ps.snapshot())
		ps.mu.Unlock()
	}
	return out, nil
}

func ptr[T any](v T) *T { return &v }

// run: prepares volumes and env, runs init containers in order, then the
// containers, each restarted per the pod's restartPolicy.
func (p *provider) run(ctx context.Context, ps *podState) {
	defer close(ps.done)
	pod := ps.pod
	fail := func(reason, msg string) {
		ps.mu.Lock()
		ps.pod.Status.Phase = v1.PodFailed
		ps.pod.Status.Reason = reason
		ps.pod.Status.Message = msg
		ps.mu.Unlock()
		p.push(ps)
	}
	if err := os.MkdirAll(filepath.Join(ps.dir, "logs"), 0o755); err != nil {
		fail("CreatePodRootFailed", err.Error())
		return
	}
	hosts, err := p.svc.hostsFile(pod.Namespace)
	if err != nil {
		fail("CreatePodRootFailed", err.Error())
		return
	}
	ps.mu.Lock()
	ps.hosts = hosts
	ps.mu.Unlock()
	// As the kubelet: a volume or an env var whose Secret or ConfigMap is missing keeps the
	// pod Pending, its containers waiting with the reason, and is tried again; the pod
	// does not fail (a Deployment would replace a failed pod at once, forever).
	for attempt := 0; ; attempt++ {
		reason, msg := "", ""
		mounts, err := p.prepareVolumes(ctx, ps)
		if err != nil {
			reason, msg = "ContainerCreating", "MountVolume.SetUp failed: "+err.Error()
		} else {
			for _, c := range ps.ctrs {
				env, err := p.containerEnv(ps, c, mounts)
				if err != nil {
					reason, msg = "CreateContainerConfigError", fmt.Sprintf("container %s: %v", c.spec.Name, err)
					break
				}
				c.env = env
				c.argv = p.expandArgv(c.spec, env)
			}
		}
		if reason == "" {
			break
		}
		if attempt == 0 {
			log.L.Infof("pod %s/%s waits: %s", pod.Namespace, pod.Name, msg)
		}
		ps.mu.Lock()
		for _, c := range ps.ctrs {
			c.status.State = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: reason, Message: msg}}
		}
		ps.mu.Unlock()
		p.push(ps)
		if !sleepCtx(ctx, 2*time.Second) {
			return
		}
	}
	p.push(ps)
	policy := pod.Spec.RestartPolicy
	for _, c := range ps.ctrs {
		if !c.init {
			continue
		}
		for {
			code := p.runOnce(ctx, ps, c)
			if ctx.Err() != nil {
				return
			}
			if code == 0 {
				break
			}
			if policy == v1.RestartPolicyNever {
				fail("InitContainerFailed", fmt.Sprintf("init container %s exited with %d", c.spec.Name, code))
				return
			}
			if !p.waitRestart(ctx, ps, c) {
				return
			}
		}
	}
	ps.mu.Lock()
	ps.pod.Status.Phase = v1.PodRunning
	ps.mu.Unlock()
	var wg sync.WaitGroup
	var failed sync.Map
	for _, c := range ps.ctrs {
		if c.init {
			continue
		}
		wg.Add(1)
		go func(c *ctr) {
			defer wg.Done()
			for {
				code := p.runOnce(ctx, ps, c)
				if ctx.Err() != nil {
					return
				}
				if policy == v1.RestartPolicyNever || (policy == v1.RestartPolicyOnFailure && code == 0) {
					if code != 0 {
						failed.Store(c.spec.Name, true)
					}
					return
				}
				if !p.waitRestart(ctx, ps, c) {
					return
				}
			}
		}(c)
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	anyFailed := false
	failed.Range(func(_, _ any) bool { anyFailed = true; return false })
	ps.mu.Lock()
	if anyFailed {
		ps.pod.Status.Phase = v1.PodFailed
	} else {
		ps.pod.Status.Phase = v1.PodSucceeded
	}
	ps.mu.Unlock()
	p.push(ps)
}

// waitRestart: the container waits in CrashLoopBackOff, then restarts;
// false when the pod is being stopped.
func (p *provider) waitRestart(ctx context.Context, ps *podState, c *ctr) bool {
	ps.mu.Lock()
	d := backoff(c.status.RestartCount)
	if c.status.State.Terminated != nil {
		c.status.LastTerminationState = v1.ContainerState{Terminated: c.status.State.Terminated}
	}
	c.status.State = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
		Message: fmt.Sprintf("back-off %s restarting container %s", d, c.spec.Name)}}
	ps.mu.Unlock()
	p.push(ps)
	if !sleepCtx(ctx, d) {
		return false
	}
	ps.mu.Lock()
	c.status.RestartCount++
	ps.mu.Unlock()
	return true
}

func backoff(restarts int32) time.Duration {
	d := time.Second << uint(min(restarts, 4))
	return min(d, 10*time.Second)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// runOnce runs the container's process to its end and returns its exit code.
func (p *provider) runOnce(ctx context.Context, ps *podState, c *ctr) int32 {
	terminate := func(code int32, reason, msg string, started metav1.Time) int32 {
		ps.mu.Lock()
		if c.status.State.Terminated != nil {
			c.status.LastTerminationState = v1.ContainerState{Terminated: c.status.State.Terminated}
		}
		c.status.State = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{
			ExitCode: code, Reason: reason, Message: msg, StartedAt: started, FinishedAt: metav1.Now()}}
		c.status.Ready = false
		c.status.Started = ptr(false)
		c.proc = nil
		ps.mu.Unlock()
		p.push(ps)
		return code
	}
	if len(c.argv) == 0 {
		return terminate(128, "NoCommand", "the container has no command and the node's image file (--images) names no entrypoint for image "+c.spec.Image+": this node runs host processes and cannot read an image's entrypoint; set command or add the image to that file", metav1.Now())
	}
	logf, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return terminate(128, "StartError", err.Error(), metav1.Now())
	}
	defer logf.Close()
	if err := missing(c.argv[0], c.env); err != nil {
		return terminate(127, "StartError", err.Error(), metav1.Now())
	}
	cmd := p.command(context.Background(), ps, c, c.argv, c.env)
	out := &lineLog{f: logf}
	cmd.Stdout = out // the same writer: one goroutine writes both
	cmd.Stderr = out
	ps.mu.Lock()
	if ps.deleted {
		ps.mu.Unlock()
		return 137
	}
	err = cmd.Start()
	started := metav1.Now()
	if err != nil {
		ps.mu.Unlock()
		code := int32(128)
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			code = 127
		}
		return terminate(code, "StartError", err.Error(), started)
	}
	c.proc = cmd.Process
	if c.status.State.Terminated != nil {
		c.status.LastTerminationState = v1.ContainerState{Terminated: c.status.State.Terminated}
	}
	c.status.State = v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: started}}
	c.status.Started = ptr(true)
	c.status.Ready = !c.init && c.spec.ReadinessProbe == nil
	c.status.ContainerID = fmt.Sprintf("process://%d", cmd.Process.Pid)
	ps.mu.Unlock()
	p.push(ps)
	// Probes (probes.go) while this run of the container lasts.
	pctx, stopProbes := context.WithCancel(context.Background())
	proc := cmd.Process
	if !c.init && c.spec.ReadinessProbe != nil {
		go p.probe(pctx, ps, c, c.spec.ReadinessProbe, func(ok bool, _ string) {
			ps.mu.Lock()
			changed := c.proc == proc && c.status.Ready != ok
			if changed {
				c.status.Ready = ok
			}
			ps.mu.Unlock()
			if changed {
				p.push(ps)
			}
		})
	}
	if !c.init && c.spec.LivenessProbe != nil {
		go p.probe(pctx, ps, c, c.spec.LivenessProbe, func(ok bool, msg string) {
			if ok {
				return
			}
			log.L.Infof("pod %s/%s container %s: liveness probe failed, killing it: %s", ps.pod.Namespace, ps.pod.Name, c.spec.Name, msg)
			syscall.Kill(-proc.Pid, syscall.SIGTERM)
			if sleepCtx(pctx, 5*time.Second) {
				syscall.Kill(-proc.Pid, syscall.SIGKILL)
			}
		})
	}
	err = cmd.Wait()
	stopProbes()
	code := int32(0)
	reason := "Completed"
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				code = 128 + int32(ws.Signal())
			} else {
				code = int32(ee.ExitCode())
			}
		} else {
			code = 128
		}
		reason = "Error"
	}
	return terminate(code, reason, "", started)
}

// killAll: TERM to every process group of the pod, KILL after grace (at most 10 s).
func (p *provider) killAll(ps *podState, grace time.Duration) {
	grace = min(grace, 10*time.Second)
	var procs []*os.Process
	ps.mu.Lock()
	for _, c := range ps.ctrs {
		if c.proc != nil {
			procs = append(procs, c.proc)
		}
	}
	ps.mu.Unlock()
	for _, pr := range procs {
		syscall.Kill(-pr.Pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		alive := false
		for _, pr := range procs {
			if syscall.Kill(-pr.Pid, 0) == nil {
				alive = true
			}
		}
		if !alive {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, pr := range procs {
		syscall.Kill(-pr.Pid, syscall.SIGKILL)
	}
}

var nonAlnum = regexp.MustCompile(`[^A-Za-z0-9]+`)

func envName(s string) string { return strings.ToUpper(nonAlnum.ReplaceAllString(s, "_")) }

// prepareVolumes makes a directory for each volume and, for each volume
// mount, a symlink <pod root>/<mountPath> to it. It returns volume name ->
// host directory.
func (p *provider) prepareVolumes(ctx context.Context, ps *podState) (map[string]string, error) {
	pod := ps.pod
	dirs := map[string]string{}
	for _, vol := range pod.Spec.Volumes {
		d := filepath.Join(ps.dir, "volumes", vol.Name)
		switch {
		case vol.EmptyDir != nil:
			if err := os.MkdirAll(d, 0o777); err != nil {
				return nil, err
			}
		case vol.Secret != nil:
			s, err := p.client.CoreV1().Secrets(pod.Namespace).Get(ctx, vol.Secret.SecretName, metav1.GetOptions{})
			if err != nil {
				if vol.Secret.Optional != nil && *vol.Secret.Optional {
					s = &v1.Secret{}
				} else {
					return nil, fmt.Errorf("volume %s: %w", vol.Name, err)
				}
			}
			data := map[string][]byte{}
			for k, v := range s.Data {
				data[k] = v
			}
			if err := writeFiles(d, data, vol.Secret.Items); err != nil {
				return nil, err
			}
		case vol.ConfigMap != nil:
			cm, err := p.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, vol.ConfigMap.Name, metav1.GetOptions{})
			if err != nil {
				if vol.ConfigMap.Optional != nil && *vol.ConfigMap.Optional {
					cm = &v1.ConfigMap{}
				} else {
					return nil, fmt.Errorf("volume %s: %w", vol.Name, err)
				}
			}
			if err := writeFiles(d, cmData(cm), vol.ConfigMap.Items); err != nil {
				return nil, err
			}
		case vol.PersistentVolumeClaim != nil:
			d = filepath.Join(p.root, "pvcs", pod.Namespace, vol.PersistentVolumeClaim.ClaimName)
			if err := os.MkdirAll(d, 0o777); err != nil {
				return nil, err
			}
		case vol.HostPath != nil:
			d = vol.HostPath.Path
		case vol.Projected != nil:
			data := map[string][]byte{}
			for _, src := range vol.Projected.Sources {
				switch {
				case src.ConfigMap != nil:
					cm, err := p.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, src.ConfigMap.Name, metav1.GetOptions{})
					if err != nil {
						return nil, fmt.Errorf("volume %s: %w", vol.Name, err)
					}
					project(data, cmData(cm), src.ConfigMap.Items)
				case src.Secret != nil:
					s, err := p.client.CoreV1().Secrets(pod.Namespace).Get(ctx, src.Secret.Name, metav1.GetOptions{})
					if err != nil {
						return nil, fmt.Errorf("volume %s: %w", vol.Name, err)
					}
					project(data, s.Data, src.Secret.Items)
				case src.DownwardAPI != nil:
					for _, it := range src.DownwardAPI.Items {
						if it.FieldRef != nil {
							v, err := fieldValue(pod, ps.ip, it.FieldRef.FieldPath)
							if err != nil {
								return nil, err
							}
							data[it.Path] = []byte(v)
						}
					}
				case src.ServiceAccountToken != nil:
					exp := int64(3600)
					if src.ServiceAccountToken.ExpirationSeconds != nil {
						exp = *src.ServiceAccountToken.ExpirationSeconds
					}
					var aud []string
					if src.ServiceAccountToken.Audience != "" {
						aud = []string{src.ServiceAccountToken.Audience}
					}
					tr, err := p.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName,
						&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{Audiences: aud, ExpirationSeconds: &exp,
							BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}}},
						metav1.CreateOptions{})
					if err != nil {
						return nil, fmt.Errorf("volume %s: service account token: %w", vol.Name, err)
					}
					data[src.ServiceAccountToken.Path] = []byte(tr.Status.Token)
				}
			}
			if err := writeFiles(d, data, nil); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("volume %s: only emptyDir, secret, configMap, persistentVolumeClaim, hostPath and projected volumes are supported", vol.Name)
		}
		dirs[vol.Name] = d
	}
	// Each mount becomes <pod root>/<mountPath> -> volume dir (+ subPath).
	for _, c := range ps.ctrs {
		for _, m := range c.spec.VolumeMounts {
			d, ok := dirs[m.Name]
			if !ok {
				return nil, fmt.Errorf("container %s mounts unknown volume %s", c.spec.Name, m.Name)
			}
			target := filepath.Join(d, m.SubPath)
			if m.SubPath != "" {
				os.MkdirAll(target, 0o777)
			}
			link := filepath.Join(ps.dir, filepath.Clean("/"+m.MountPath))
			if !strings.HasPrefix(link, ps.dir+"/") {
				return nil, fmt.Errorf("bad mountPath %q", m.MountPath)
			}
			os.MkdirAll(filepath.Dir(link), 0o755)
			if cur, err := os.Readlink(link); err == nil && cur == target {
				continue
			}
			if err := os.Symlink(target, link); err != nil {
				return nil, fmt.Errorf("mount %s at %s: %w", m.Name, m.MountPath, err)
			}
		}
	}
	// And at the absolute mountPath, in each process's mount namespace (podExec).
	for _, c := range ps.ctrs {
		var b strings.Builder
		for _, m := range c.spec.VolumeMounts {
			ro := m.ReadOnly || readOnlyVolume(pod.Spec.Volumes, m.Name)
			fmt.Fprintf(&b, "%t\t%s\t%s\n", ro, filepath.Join(dirs[m.Name], m.SubPath), filepath.Clean("/"+m.MountPath))
		}
		c.binds = filepath.Join(ps.dir, ".binds", c.spec.Name)
		if err := os.MkdirAll(filepath.Dir(c.binds), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(c.binds, []byte(b.String()), 0o644); err != nil {
			return nil, err
		}
	}
	return dirs, nil
}

func cmData(cm *v1.ConfigMap) map[string][]byte {
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return data
}

func project(into map[string][]byte, data map[string][]byte, items []v1.KeyToPath) {
	if len(items) == 0 {
		for k, v := range data {
			into[k] = v
		}
		return
	}
	for _, it := range items {
		if v, ok := data[it.Key]; ok {
			into[it.Path] = v
		}
	}
}

func writeFiles(dir string, data map[string][]byte, items []v1.KeyToPath) error {
	files := map[string][]byte{}
	project(files, data, items)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for path, v := range files {
		f := filepath.Join(dir, filepath.Clean("/"+path))
		os.MkdirAll(filepath.Dir(f), 0o755)
		if err := os.WriteFile(f, v, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func fieldValue(pod *v1.Pod, ip, path string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP":
		return ip, nil
	case "status.hostIP":
		return "127.0.0.1", nil
	}
	if strings.HasPrefix(path, "metadata.labels['") && strings.HasSuffix(path, "']") {
		return pod.Labels[path[len("metadata.labels['"):len(path)-2]], nil
	}
	if strings.HasPrefix(path, "metadata.annotations['") && strings.HasSuffix(path, "']") {
		return pod.Annotations[path[len("metadata.annotations['"):len(path)-2]], nil
	}
	return "", fmt.Errorf("unsupported fieldRef %q", path)
}

func (p *provider) containerEnv(ps *podState, c *ctr, mounts map[string]string) ([]string, error) {
	pod := ps.pod
	// The image's programs first, as its PATH would have them: the directory of the
	// entrypoint the image file names (a test puts an image's other commands, such as
	// kando beside kanister-agent, in that directory).
	path := os.Getenv("PATH")
	if ep := p.entrypoint(c.spec.Image); len(ep) > 0 && filepath.IsAbs(ep[0]) {
		path = filepath.Dir(ep[0]) + ":" + path
	}
	env := []string{
		"PATH=" + path,
		"HOME=" + ps.dir,
		"HOSTNAME=" + pod.Name,
		"POD_IP=" + ps.ip,
		"POD_ROOT=" + ps.dir,
	}
	if p.apiHost != "" {
		env = append(env, "KUBERNETES_SERVICE_HOST="+p.apiHost, "KUBERNETES_SERVICE_PORT="+p.apiPort)
	}
	for _, m := range c.spec.VolumeMounts {
		env = append(env, "MOUNT_"+envName(m.Name)+"="+filepath.Join(mounts[m.Name], m.SubPath))
	}
	vals := map[string]string{}
	for _, kv := range env {
		i := strings.IndexByte(kv, '=')
		vals[kv[:i]] = kv[i+1:]
	}
	var order []string
	set := func(k, v string) {
		if _, ok := vals[k]; !ok {
			order = append(order, k)
		}
		vals[k] = v
	}
	for _, k := range []string{"PATH", "HOME", "HOSTNAME", "POD_IP", "POD_ROOT"} {
		order = append(order, k)
	}
	for _, kv := range env[5:] {
		order = append(order, kv[:strings.IndexByte(kv, '=')])
	}
	for _, ef := range c.spec.EnvFrom {
		switch {
		case ef.SecretRef != nil:
			s, err := p.secrets.Secrets(pod.Namespace).Get(ef.SecretRef.Name)
			if err != nil {
				if ef.SecretRef.Optional != nil && *ef.SecretRef.Optional {
					continue
				}
				return nil, err
			}
			for k, v := range s.Data {
				set(ef.Prefix+k, string(v))
			}
		case ef.ConfigMapRef != nil:
			cm, err := p.configMaps.ConfigMaps(pod.Namespace).Get(ef.ConfigMapRef.Name)
			if err != nil {
				if ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional {
					continue
				}
				return nil, err
			}
			for k, v := range cm.Data {
				set(ef.Prefix+k, v)
			}
		}
	}
	for _, e := range c.spec.Env {
		if e.ValueFrom == nil {
			set(e.Name, expand(e.Value, vals))
			continue
		}
		vf := e.ValueFrom
		switch {
		case vf.SecretKeyRef != nil:
			s, err := p.client.CoreV1().Secrets(pod.Namespace).Get(context.Background(), vf.SecretKeyRef.Name, metav1.GetOptions{})
			opt := vf.SecretKeyRef.Optional != nil && *vf.SecretKeyRef.Optional
			if err != nil {
				if opt {
					continue
				}
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			v, ok := s.Data[vf.SecretKeyRef.Key]
			if !ok {
				if opt {
					continue
				}
				return nil, fmt.Errorf("env %s: secret %s has no key %s", e.Name, s.Name, vf.SecretKeyRef.Key)
			}
			set(e.Name, string(v))
		case vf.ConfigMapKeyRef != nil:
			cm, err := p.client.CoreV1().ConfigMaps(pod.Namespace).Get(context.Background(), vf.ConfigMapKeyRef.Name, metav1.GetOptions{})
			opt := vf.ConfigMapKeyRef.Optional != nil && *vf.ConfigMapKeyRef.Optional
			if err != nil {
				if opt {
					continue
				}
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			v, ok := cm.Data[vf.ConfigMapKeyRef.Key]
			if !ok {
				if opt {
					continue
				}
				return nil, fmt.Errorf("env %s: configmap %s has no key %s", e.Name, cm.Name, vf.ConfigMapKeyRef.Key)
			}
			set(e.Name, v)
		case vf.FieldRef != nil:
			v, err := fieldValue(pod, ps.ip, vf.FieldRef.FieldPath)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			set(e.Name, v)
		default:
			return nil, fmt.Errorf("env %s: only value, secretKeyRef, configMapKeyRef and fieldRef are supported", e.Name)
		}
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vals[k])
	}
	return out, nil
}

var varRef = regexp.MustCompile(`\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)`)

// expand: Kubernetes' $(VAR) expansion; $$ is a literal $, unknown stays as is.
func expand(s string, vals map[string]string) string {
	return varRef.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		if v, ok := vals[m[2:len(m)-1]]; ok {
			return v
		}
		return m
	})
}

// expandArgv: the container's command and args with $(VAR) expanded; an
// image without command gets the entrypoint the node's image file names.
func (p *provider) expandArgv(c v1.Container, env []string) []string {
	command := c.Command
	if len(command) == 0 {
		command = p.entrypoint(c.Image)
	} else if filepath.IsAbs(command[0]) {
		// A program at its path in the image (/usr/local/bin/kanister-agent), missing
		// on the host: the image file's entrypoint of the same name stands for it.
		if _, err := os.Stat(command[0]); err != nil {
			if ep := p.entrypoint(c.Image); len(ep) > 0 && filepath.Base(ep[0]) == filepath.Base(command[0]) {
				command = append([]string{ep[0]}, command[1:]...)
			}
		}
	}
	if len(command) == 0 {
		return nil
	}
	vals := map[string]string{}
	for _, kv := range env {
		i := strings.IndexByte(kv, '=')
		vals[kv[:i]] = kv[i+1:]
	}
	var argv []string
	for _, a := range append(append([]string{}, command...), c.Args...) {
		argv = append(argv, expand(a, vals))
	}
	return argv
}

func (p *provider) container(ns, pod, name string) (*podState, *ctr, error) {
	ps, err := p.lookup(ns, pod)
	if err != nil {
		return nil, nil, err
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if name == "" && len(ps.pod.Spec.Containers) > 0 {
		name = ps.pod.Spec.Containers[0].Name
	}
	c := ps.byName[name]
	if c == nil {
		return nil, nil, errdefs.NotFoundf("container %s not found in pod %s/%s", name, ns, pod)
	}
	return ps, c, nil
}

func (p *provider) RunInContainer(ctx context.Context, ns, podName, name string, cmdline []string, attach api.AttachIO) error {
	ps, c, err := p.container(ns, podName, name)
	if err != nil {
		return err
	}
	ps.mu.Lock()
	running := c.status.State.Running != nil
	env := c.env
	ps.mu.Unlock()
	if !running {
		return fmt.Errorf("container %s is not running", c.spec.Name)
	}
	if len(cmdline) == 0 {
		return errdefs.InvalidInput("no command")
	}
	if err := missing(cmdline[0], env); err != nil {
		if e := attach.Stderr(); e != nil {
			fmt.Fprintf(e, "%v\n", err)
		}
		return utilexec.CodeExitError{Err: err, Code: 127}
	}
	cmd := p.command(ctx, ps, c, cmdline, env)
	cmd.SysProcAttr.Setpgid = false
	if in := attach.Stdin(); in != nil {
		cmd.Stdin = in
	}
	if out := attach.Stdout(); out != nil {
		cmd.Stdout = out
	}
	if e := attach.Stderr(); e != nil {
		cmd.Stderr = e
	} else if attach.TTY() {
		cmd.Stderr = cmd.Stdout
	}
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return utilexec.CodeExitError{Err: err, Code: ee.ExitCode()}
	}
	if err != nil && (errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist)) {
		if e := attach.Stderr(); e != nil {
			fmt.Fprintf(e, "%v\n", err)
		}
		return utilexec.CodeExitError{Err: err, Code: 127}
	}
	return err
}

func (p *provider) AttachToContainer(ctx context.Context, ns, pod, name string, attach api.AttachIO) error {
	return errdefs.InvalidInput("attach is not supported by this node")
}

func (p *provider) PortForward(ctx context.Context, ns, pod string, port int32, stream io.ReadWriteCloser) error {
	return errdefs.InvalidInput("port-forward is not supported by this node")
}

func (p *provider) GetStatsSummary(context.Context) (*statsv1alpha1.Summary, error) {
	return &statsv1alpha1.Summary{}, nil
}

func (p *provider) GetMetricsResource(context.Context) ([]*dto.MetricFamily, error) {
	return nil, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "pod-exec" {
		podExec(os.Args[2:])
		return
	}
	self, err := os.Executable()
	if err != nil {
		panic(err)
	}
	var (
		name       = flag.String("name", "kanister-node", "node name")
		kubeconfig = flag.String("kubeconfig", "", "kubeconfig of the node (user system:node:<name>)")
		root       = flag.String("root", "/tmp/kanister-cluster/node", "directory for pod roots, logs and PVC directories")
		port       = flag.Int("port", 10250, "kubelet API port on 127.0.0.1")
		cert       = flag.String("tls-cert", "", "serving certificate")
		key        = flag.String("tls-key", "", "serving key")
		clientCA   = flag.String("client-ca", "", "CA of the clients allowed on the kubelet port (the API server's)")
		apiHost    = flag.String("api-host", "", "KUBERNETES_SERVICE_HOST given to pods")
		apiPort    = flag.String("api-port", "", "KUBERNETES_SERVICE_PORT given to pods")
		images     = flag.String("images", "", "file of `IMAGE ENTRYPOINT...` lines: the command of a container of that image without command (read at each pod start)")
		verbose    = flag.Bool("v", false, "debug logs")
	)
	flag.Parse()
	lg := logrus.New()
	if *verbose {
		lg.SetLevel(logrus.DebugLevel)
	}
	log.L = logruslogger.FromLogrus(logrus.NewEntry(lg))

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()

	rc, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		lg.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		lg.Fatal(err)
	}
	if err := os.MkdirAll(*root, 0o755); err != nil {
		lg.Fatal(err)
	}
	var prov *provider
	mux := http.NewServeMux()
	n, err := nodeutil.NewNode(*name, func(cfg nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
		prov = &provider{name: *name, root: *root, apiHost: *apiHost, apiPort: *apiPort, client: client, self: self, images: *images,
			secrets: cfg.Secrets, configMaps: cfg.ConfigMaps, pods: map[string]*podState{}, ips: map[string]string{}}
		nd := cfg.Node
		nd.Status.Capacity = v1.ResourceList{
			v1.ResourceCPU:    resource.MustParse(strconv.Itoa(runtime.NumCPU() * 8)),
			v1.ResourceMemory: resource.MustParse("64Gi"),
			v1.ResourcePods:   resource.MustParse("200"),
		}
		nd.Status.Allocatable = nd.Status.Capacity
		nd.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "127.0.0.1"}, {Type: v1.NodeHostName, Address: *name}}
		nd.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(*port)
		nd.Status.NodeInfo = v1.NodeSystemInfo{KubeletVersion: version, OperatingSystem: "linux", Architecture: runtime.GOARCH,
			ContainerRuntimeVersion: "host-process://" + version}
		nd.Labels["kubernetes.io/os"] = "linux"
		nd.Labels["kubernetes.io/arch"] = runtime.GOARCH
		nd.Labels["node.kubernetes.io/instance-type"] = "host-process"
		return prov, nil, nil
	},
		nodeutil.WithClient(client),
		func(c *nodeutil.NodeConfig) error {
			c.HTTPListenAddr = fmt.Sprintf("127.0.0.1:%d", *port)
			c.Handler = mux
			c.NumWorkers = 4
			c.SkipDownwardAPIResolution = true
			c.StreamIdleTimeout = 4 * time.Hour
			c.StreamCreationTimeout = 30 * time.Second
			return nil
		},
		nodeutil.AttachProviderRoutes(mux),
		nodeutil.WithTLSConfig(nodeutil.WithKeyPairFromPath(*cert, *key), func(tc *tls.Config) error {
			if *clientCA == "" {
				return nil
			}
			return nodeutil.WithCAFromPath(*clientCA)(tc)
		}),
	)
	if err != nil {
		lg.Fatal(err)
	}
	stopAll := func() {
		// Stop every pod's processes before exiting.
		pods, _ := prov.GetPods(context.Background())
		var wg sync.WaitGroup
		for _, pod := range pods {
			ps, err := prov.lookup(pod.Namespace, pod.Name)
			if err != nil {
				continue
			}
			wg.Add(1)
			go func() { defer wg.Done(); ps.cancel(); prov.killAll(ps, 2*time.Second) }()
		}
		wg.Wait()
	}
	prov.svc = newServices(prov)
	if err := prov.svc.start(ctx, client); err != nil {
		lg.Fatal(err)
	}
	lg.Infof("node %s: kubelet API on 127.0.0.1:%d, pod roots under %s", *name, *port, *root)
	err = n.Run(ctx)
	stopAll()
	if err != nil && ctx.Err() == nil {
		lg.Fatal(err)
	}
}
