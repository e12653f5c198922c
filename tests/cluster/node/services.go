// Services on the test node: names and a proxy, since pods are host processes
// on loopback addresses and no kube-proxy or cluster DNS runs.
//
//   - Every Service with a selector and a cluster IP gets an address of the
//     node's own, 127.1.x.y, on which the node listens on each of the
//     Service's TCP ports. A connection goes to a Ready pod of the Service's
//     namespace that matches the selector (round robin), at the port's
//     targetPort (a number or a container port's name). The API's
//     spec.clusterIP (10.0.0.0/24) stays virtual: nothing routes it.
//   - default/kubernetes gets such an address too, proxied to the API server.
//   - A headless Service (clusterIP None) names its Ready pods' IPs.
//   - Names: one hosts file per namespace, <root>/hosts/<namespace>, that
//     every process of a pod in that namespace sees as /etc/hosts (the
//     node starts each process in a mount namespace of its own with that file
//     bound over /etc/hosts, see podExec). It holds, for every Service,
//     <svc>.<ns>, <svc>.<ns>.svc and <svc>.<ns>.svc.cluster.local, the short
//     name <svc> for the Services of its own namespace, and
//     <hostname>.<subdomain>... for pods that set both (StatefulSet pods).
//     The file is rewritten in place (the bind mount keeps its inode) when
//     Services or Ready pods change.
//
// EndpointSlices are not used: the API server rejects loopback endpoint
// addresses, so the endpoint-slice controller cannot write any here.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/virtual-kubelet/virtual-kubelet/log"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

type svcProxy struct {
	ip        string
	ports     map[int32]net.Listener // service port -> listener
	svc       *v1.Service
	roundRobn atomic.Uint64
}

type services struct {
	p    *provider
	dir  string // <root>/hosts
	mu   sync.Mutex
	svcs map[string]*v1.Service // ns/name
	prox map[string]*svcProxy   // ns/name
	ips  map[string]string      // 127.1.x.y -> ns/name
	last map[string]string      // namespace -> hosts file content written
	kick chan struct{}
}

func newServices(p *provider) *services {
	return &services{p: p, dir: filepath.Join(p.root, "hosts"), svcs: map[string]*v1.Service{},
		prox: map[string]*svcProxy{}, ips: map[string]string{}, last: map[string]string{},
		kick: make(chan struct{}, 1)}
}

// start watches Services and keeps proxies and hosts files current until ctx ends.
func (s *services) start(ctx context.Context, client kubernetes.Interface) error {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return err
	}
	f := informers.NewSharedInformerFactory(client, 0)
	inf := f.Core().V1().Services().Informer()
	set := func(obj any) {
		if svc, ok := obj.(*v1.Service); ok {
			s.mu.Lock()
			s.svcs[key(svc.Namespace, svc.Name)] = svc
			s.mu.Unlock()
			s.changed()
		}
	}
	del := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if svc, ok := obj.(*v1.Service); ok {
			s.mu.Lock()
			delete(s.svcs, key(svc.Namespace, svc.Name))
			s.mu.Unlock()
			s.changed()
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: set, UpdateFunc: func(_, n any) { set(n) }, DeleteFunc: del}); err != nil {
		return err
	}
	f.Start(ctx.Done())
	go func() {
		for {
			select {
			case <-ctx.Done():
				s.mu.Lock()
				for _, px := range s.prox {
					for _, l := range px.ports {
						l.Close()
					}
				}
				s.mu.Unlock()
				return
			case <-s.kick:
				s.reconcile()
			}
		}
	}()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("the Service informer did not sync")
	}
	return nil
}

// changed asks for a reconcile (Services or Ready pods changed).
func (s *services) changed() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// hostsFile is the /etc/hosts of the pods of ns; it exists once this returns.
func (s *services) hostsFile(ns string) (string, error) {
	path := filepath.Join(s.dir, ns)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.last[ns]; !ok {
		content := s.hostsLocked(ns, s.readyPods())
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return "", err
		}
		s.last[ns] = content
	}
	return path, nil
}

type readyPod struct {
	ns, ip, hostname, subdomain string
	labels                      labels.Set
	spec                        *v1.PodSpec
}

// readyPods: the pods whose phase is Running and whose containers all run.
func (s *services) readyPods() []readyPod {
	s.p.mu.Lock()
	all := make([]*podState, 0, len(s.p.pods))
	for _, ps := range s.p.pods {
		all = append(all, ps)
	}
	s.p.mu.Unlock()
	var out []readyPod
	for _, ps := range all {
		ps.mu.Lock()
		pod := ps.snapshot()
		deleted := ps.deleted
		ps.mu.Unlock()
		ready := false
		for _, c := range pod.Status.Conditions {
			if c.Type == v1.PodReady && c.Status == v1.ConditionTrue {
				ready = true
			}
		}
		if ready && !deleted {
			out = append(out, readyPod{ns: pod.Namespace, ip: ps.ip, hostname: pod.Spec.Hostname,
				subdomain: pod.Spec.Subdomain, labels: labels.Set(pod.Labels), spec: &ps.pod.Spec})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ip < out[j].ip })
	return out
}

func selects(svc *v1.Service, p readyPod) bool {
	return p.ns == svc.Namespace && len(svc.Spec.Selector) > 0 &&
		labels.SelectorFromSet(svc.Spec.Selector).Matches(p.labels)
}

// hostsLocked renders the hosts file of namespace ns; s.mu held.
func (s *services) hostsLocked(ns string, ready []readyPod) string {
	var b strings.Builder
	b.WriteString("# written by kanister-node: the Services of the test cluster\n")
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	names := func(svcNs, name string) string {
		n := fmt.Sprintf("%s.%s %s.%s.svc %s.%s.svc.cluster.local", name, svcNs, name, svcNs, name, svcNs)
		if svcNs == ns {
			n = name + " " + n
		}
		return n
	}
	keys := make([]string, 0, len(s.svcs))
	for k := range s.svcs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		svc := s.svcs[k]
		if px := s.prox[k]; px != nil {
			fmt.Fprintf(&b, "%s\t%s\n", px.ip, names(svc.Namespace, svc.Name))
			continue
		}
		if svc.Spec.ClusterIP == v1.ClusterIPNone {
			for _, p := range ready {
				if selects(svc, p) {
					fmt.Fprintf(&b, "%s\t%s\n", p.ip, names(svc.Namespace, svc.Name))
				}
			}
		}
	}
	for _, p := range ready {
		if p.hostname == "" || p.subdomain == "" {
			continue
		}
		n := fmt.Sprintf("%s.%s.%s.svc.cluster.local %s.%s.%s.svc", p.hostname, p.subdomain, p.ns,
			p.hostname, p.subdomain, p.ns)
		if p.ns == ns {
			n = fmt.Sprintf("%s.%s %s", p.hostname, p.subdomain, n)
		}
		fmt.Fprintf(&b, "%s\t%s\n", p.ip, n)
	}
	return b.String()
}

// reconcile opens and closes proxies to match the Services, then rewrites the
// hosts files whose content changed.
func (s *services) reconcile() {
	ready := s.readyPods()
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, px := range s.prox {
		svc, ok := s.svcs[k]
		if !ok || svc.UID != px.svc.UID || !(proxied(svc) || k == apiService) || !samePorts(svc, px.svc) {
			for _, l := range px.ports {
				l.Close()
			}
			delete(s.ips, px.ip)
			delete(s.prox, k)
			continue
		}
		px.svc = svc
	}
	for k, svc := range s.svcs {
		if _, ok := s.prox[k]; ok || !(proxied(svc) || k == apiService) {
			continue
		}
		px, err := s.openLocked(k, svc)
		if err != nil {
			log.L.Warnf("service %s: %v", k, err)
			continue
		}
		s.prox[k] = px
	}
	for ns, old := range s.last {
		content := s.hostsLocked(ns, ready)
		if content == old {
			continue
		}
		if err := rewriteInPlace(filepath.Join(s.dir, ns), content); err != nil {
			log.L.Warnf("hosts file of %s: %v", ns, err)
			continue
		}
		s.last[ns] = content
	}
}

// apiService has no selector; its proxy goes to the API server (the names
// kubernetes.default.svc... are in the API server's certificate).
const apiService = "default/kubernetes"

func proxied(svc *v1.Service) bool {
	return len(svc.Spec.Selector) > 0 && svc.Spec.ClusterIP != v1.ClusterIPNone && svc.Spec.ClusterIP != ""
}

func samePorts(a, b *v1.Service) bool {
	if len(a.Spec.Ports) != len(b.Spec.Ports) {
		return false
	}
	for i := range a.Spec.Ports {
		if a.Spec.Ports[i].Port != b.Spec.Ports[i].Port || a.Spec.Ports[i].Protocol != b.Spec.Ports[i].Protocol {
			return false
		}
	}
	return true
}

// openLocked picks the service an address and listens on its TCP ports; s.mu held.
func (s *services) openLocked(k string, svc *v1.Service) (*svcProxy, error) {
	ip := ""
	for n := 1; n < 65534 && ip == ""; n++ {
		c := fmt.Sprintf("127.1.%d.%d", n/256, n%256)
		if n%256 == 0 || n%256 == 255 {
			continue
		}
		if _, used := s.ips[c]; !used {
			ip = c
		}
	}
	if ip == "" {
		return nil, fmt.Errorf("no free service address in 127.1.0.0/16")
	}
	px := &svcProxy{ip: ip, ports: map[int32]net.Listener{}, svc: svc}
	for _, sp := range svc.Spec.Ports {
		if sp.Protocol != "" && sp.Protocol != v1.ProtocolTCP {
			continue // UDP and SCTP are not proxied
		}
		l, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(sp.Port)))
		if err != nil {
			for _, o := range px.ports {
				o.Close()
			}
			return nil, err
		}
		px.ports[sp.Port] = l
		go s.accept(k, px, sp.Port, l)
	}
	s.ips[ip] = k
	return px, nil
}

func (s *services) accept(k string, px *svcProxy, port int32, l net.Listener) {
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		go s.forward(k, px, port, conn)
	}
}

// forward connects conn to a Ready pod of the Service (the API server for
// default/kubernetes), or closes it when none is.
func (s *services) forward(k string, px *svcProxy, port int32, conn net.Conn) {
	defer conn.Close()
	s.mu.Lock()
	svc := px.svc
	s.mu.Unlock()
	var sp *v1.ServicePort
	for i := range svc.Spec.Ports {
		if svc.Spec.Ports[i].Port == port {
			sp = &svc.Spec.Ports[i]
		}
	}
	if sp == nil {
		return
	}
	if k == apiService {
		s.pipe(conn, net.JoinHostPort(s.p.apiHost, s.p.apiPort))
		return
	}
	var cands []readyPod
	for _, p := range s.readyPods() {
		if selects(svc, p) {
			cands = append(cands, p)
		}
	}
	if len(cands) == 0 {
		log.L.Debugf("service %s: no ready pod for a connection", k)
		return
	}
	p := cands[int(px.roundRobn.Add(1)-1)%len(cands)]
	target := sp.TargetPort.IntVal
	if sp.TargetPort.StrVal != "" {
		target = 0
		for _, c := range p.spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == sp.TargetPort.StrVal {
					target = cp.ContainerPort
				}
			}
		}
	} else if target == 0 {
		target = sp.Port
	}
	if target == 0 {
		log.L.Warnf("service %s: no container port named %q", k, sp.TargetPort.StrVal)
		return
	}
	s.pipe(conn, net.JoinHostPort(p.ip, fmt.Sprint(target)))
}

// pipe copies both ways between conn and a new connection to addr until both ends close.
func (s *services) pipe(conn net.Conn, addr string) {
	up, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(up, conn)
	go pipe(conn, up)
	<-done
	<-done
}

// rewriteInPlace replaces a file's content keeping its inode, so that a bind
// mount of it shows the new content.
func rewriteInPlace(path, content string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte(content), 0); err != nil {
		return err
	}
	return f.Truncate(int64(len(content)))
}

// podExec is the node binary started as
// `kanister-node pod-exec HOSTS BINDS -- ARGV...` in a new mount namespace
// (SysProcAttr.Unshareflags, which also makes / a private mount): it binds
// HOSTS over /etc/hosts and each volume of BINDS (lines "READONLY\tSRC\tDST")
// at its absolute mountPath, then becomes ARGV. A missing mount point is
// created on the host (an empty directory, or an empty file for a file), as
// nothing can be mounted where nothing is; what is mounted is seen only in
// the namespace.
func podExec(args []string) {
	if len(args) < 4 || args[2] != "--" {
		fmt.Fprintln(os.Stderr, "usage: kanister-node pod-exec HOSTS BINDS -- COMMAND [ARGS...]")
		os.Exit(2)
	}
	fail := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "kanister-node: "+format+"\n", a...)
		os.Exit(126)
	}
	// Every source, and the program, is opened before anything is mounted: a volume at /tmp
	// would hide the pod directories (and a program built) under /tmp on the host. Mounts take
	// their source from /proc/self/fd, so what was opened is what is bound.
	opath := func(path string) int {
		fd, err := syscall.Open(path, unix.O_PATH, 0)
		if err != nil {
			fail("opening %s: %v", path, err)
		}
		return fd
	}
	hosts := opath(args[0])
	type bind struct {
		ro       bool
		src, dst string
		fd       int
	}
	var binds []bind
	if args[1] != "" {
		data, err := os.ReadFile(args[1])
		if err != nil {
			fail("reading the volume binds: %v", err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			f := strings.Split(line, "\t")
			if len(f) == 3 {
				binds = append(binds, bind{ro: f[0] == "true", src: f[1], dst: f[2]})
			}
		}
		for i := range binds {
			if _, err := os.Stat(binds[i].src); err != nil {
				fail("volume at %s: %v", binds[i].dst, err)
			}
			binds[i].fd = opath(binds[i].src)
		}
	}
	argv := args[3:]
	path := argv[0]
	if !strings.Contains(path, "/") {
		lp, err := exec.LookPath(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: command not found\n", path)
			os.Exit(127)
		}
		path = lp
	}
	var program syscall.Stat_t
	progFd, progErr := syscall.Open(path, unix.O_PATH, 0) // no O_CLOEXEC: a script's interpreter reads it
	if progErr == nil {
		progErr = syscall.Fstat(progFd, &program)
	}
	fdPath := func(fd int) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }
	if err := syscall.Mount(fdPath(hosts), "/etc/hosts", "", syscall.MS_BIND, ""); err != nil {
		fail("binding %s over /etc/hosts: %v", args[0], err)
	}
	syscall.Close(hosts)
	// Parents before children: /data before /data/sub.
	sort.SliceStable(binds, func(i, j int) bool { return len(binds[i].dst) < len(binds[j].dst) })
	for _, b := range binds {
		var fi syscall.Stat_t
		err := syscall.Fstat(b.fd, &fi)
		if err == nil {
			if fi.Mode&syscall.S_IFMT == syscall.S_IFDIR {
				err = os.MkdirAll(b.dst, 0o755)
			} else if _, serr := os.Stat(b.dst); os.IsNotExist(serr) {
				if err = os.MkdirAll(filepath.Dir(b.dst), 0o755); err == nil {
					var f *os.File
					if f, err = os.OpenFile(b.dst, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
						f.Close()
					}
				}
			}
		}
		if err != nil {
			fail("mount point %s: %v", b.dst, err)
		}
		if err := syscall.Mount(fdPath(b.fd), b.dst, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			fail("binding %s at %s: %v", b.src, b.dst, err)
		}
		if b.ro {
			if err := syscall.Mount("", b.dst, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY|syscall.MS_REC, ""); err != nil {
				fail("making %s read-only: %v", b.dst, err)
			}
		}
		syscall.Close(b.fd)
	}
	// The program by its path, unless a volume now hides it there: then by what was opened.
	if progErr == nil {
		var now syscall.Stat_t
		if err := syscall.Stat(path, &now); err != nil || now.Dev != program.Dev || now.Ino != program.Ino {
			path = fdPath(progFd)
		} else {
			syscall.Close(progFd)
		}
	}
	err := syscall.Exec(path, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "%s: %v\n", argv[0], err)
	if os.IsNotExist(err) {
		os.Exit(127)
	}
	os.Exit(126)
}

// readOnlyVolume: Secret, ConfigMap, projected and downward API volumes are
// mounted read-only, as the kubelet does.
func readOnlyVolume(vols []v1.Volume, name string) bool {
	for _, v := range vols {
		if v.Name == name {
			return v.Secret != nil || v.ConfigMap != nil || v.Projected != nil || v.DownwardAPI != nil
		}
	}
	return false
}
