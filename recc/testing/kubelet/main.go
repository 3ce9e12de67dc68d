// recc-kubelet is the streaming half of the RECC test platform's node agent: it serves the
// kubelet's HTTP API for container logs and port-forward, so that `kubectl logs` and
// `kubectl port-forward` (and clients' websocket port-forward) work through a real
// kube-apiserver, which calls kubelets at these paths with its --kubelet-client-certificate.
//
// It models the kubelet's server (k8s.io/kubernetes/pkg/kubelet/server) for Pods that the
// Python node agent runs as local processes. No container runtime is involved: the agent
// keeps, for each Pod, a directory <pods-dir>/<namespace>/<pod>/ holding
//
//	ip                       the Pod's loopback IP (e.g. 127.1.0.5)
//	<container>.log          the bytes the current instance wrote, appended as it runs
//	<container>.previous.log the previous instance's (after a restart)
//	<container>.exited       present once the current instance has ended
//
// Port-forward uses the kubelet's own streaming library (SPDY and websocket), with a
// forwarder dialing <ip>:<port> where a runtime would dial localhost in the Pod's netns.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/kubelet/pkg/cri/streaming/portforward"
)

type server struct{ podsDir string }

// segment says whether a name from the URL is one path segment (not "", ".", "..").
func segment(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\\\x00")
}

// podDir is a Pod's directory, or "" when no such Pod is kept.
func (s *server) podDir(namespace, pod string) string {
	dir := filepath.Join(s.podsDir, namespace, pod)
	if info, err := os.Stat(dir); !segment(namespace) || !segment(pod) || err != nil || !info.IsDir() {
		return ""
	}
	return dir
}

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

// containerLogs answers GET /containerLogs/{namespace}/{pod}/{container} as the kubelet does.
// Honoured: follow, tailLines, limitBytes, previous. Accepted and ignored: timestamps,
// sinceSeconds, sinceTime and stream (the agent keeps stdout and stderr as one untimed file).
func (s *server) containerLogs(w http.ResponseWriter, r *http.Request) {
	pod, container := r.PathValue("pod"), r.PathValue("container")
	dir := s.podDir(r.PathValue("namespace"), pod)
	if dir == "" {
		http.Error(w, fmt.Sprintf("pod %q does not exist", pod), http.StatusNotFound)
		return
	}
	base := filepath.Join(dir, container)
	if !segment(container) || !(exists(base+".log") || exists(base+".previous.log")) {
		http.Error(w, fmt.Sprintf("container %q not found in pod %q", container, pod), http.StatusNotFound)
		return
	}
	q := r.URL.Query()
	boolean := func(name string) bool { v, err := strconv.ParseBool(q.Get(name)); return err == nil && v }
	number := func(name string) int64 { // -1 when absent, -2 when invalid
		if q.Get(name) == "" {
			return -1
		} else if n, err := strconv.ParseInt(q.Get(name), 10, 64); err == nil && n >= 0 {
			return n
		}
		return -2
	}
	tail, limit := number("tailLines"), number("limitBytes")
	if tail == -2 || limit == -2 {
		http.Error(w, `{"message": "Invalid request."}`, http.StatusUnprocessableEntity)
		return
	}
	path, follow, missing := base+".log", boolean("follow"), "container %q in pod %q is waiting to start"
	if boolean("previous") { // a previous instance has ended: nothing to follow
		path, follow, missing = base+".previous.log", false, "previous terminated container %q in pod %q not found"
	}
	f, err := os.Open(path)
	if err != nil {
		http.Error(w, fmt.Sprintf(missing, container, pod), http.StatusBadRequest)
		return
	}
	defer f.Close()
	if tail >= 0 {
		_, _ = f.Seek(tailOffset(f, tail), io.SeekStart)
	}
	src := &io.LimitedReader{R: f, N: math.MaxInt64}
	if limit >= 0 {
		src.N = limit
	}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	flusher := http.NewResponseController(w)
	for {
		// Look before reading: once the instance has ended (or a restart moved its log away)
		// the copy below gets everything it wrote.
		done := exists(base+".exited") || !sameFile(f, path)
		if _, err := io.Copy(w, src); err != nil {
			return // the client went away
		}
		if flusher.Flush() != nil || !follow || done || src.N == 0 {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func sameFile(f *os.File, path string) bool {
	a, errA := f.Stat()
	b, errB := os.Stat(path)
	return errA == nil && errB == nil && os.SameFile(a, b)
}

// tailOffset is where the last n lines of f begin (a final newline ends the last line).
func tailOffset(f *os.File, n int64) int64 {
	info, err := f.Stat()
	if err != nil {
		return 0
	} else if n == 0 {
		return info.Size()
	}
	size, pos, buf := info.Size(), info.Size(), make([]byte, 32<<10)
	for pos > 0 {
		chunk := min(pos, int64(len(buf)))
		pos -= chunk
		if _, err := f.ReadAt(buf[:chunk], pos); err != nil && err != io.EOF {
			return 0
		}
		for i := chunk - 1; i >= 0; i-- {
			if buf[i] == '\n' && pos+i != size-1 {
				if n--; n == 0 {
					return pos + i + 1
				}
			}
		}
	}
	return 0
}

// forwarder dials the Pod's IP, where a container runtime would dial localhost in its netns.
type forwarder struct{ ip string }

func (f forwarder) PortForward(ctx context.Context, _ string, _ types.UID, port int32, stream io.ReadWriteCloser) error {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", net.JoinHostPort(f.ip, strconv.Itoa(int(port))))
	if err != nil {
		return err
	}
	defer conn.Close()
	fromPod, toPod := make(chan error, 1), make(chan error, 1)
	go func() { _, err := io.Copy(stream, conn); fromPod <- err }()
	go func() {
		_, err := io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite() // pass the client's end of input on to the Pod
		}
		toPod <- err
	}()
	select {
	case err = <-fromPod: // the Pod closed: done (the library then closes the stream)
	case err = <-toPod:
		// The client stopped sending (or went away): as containerd does, let the Pod's answer
		// through for a last second, so no connection outlives a vanished client for long.
		select {
		case err = <-fromPod:
		case <-time.After(time.Second):
		}
	}
	return err
}

// portForward answers /portForward/{namespace}/{pod}[/{uid}] (SPDY or websocket, as the kubelet).
// The uid is not checked: the agent keeps one Pod per name.
func (s *server) portForward(w http.ResponseWriter, r *http.Request) {
	pod := r.PathValue("pod")
	dir := s.podDir(r.PathValue("namespace"), pod)
	raw, err := os.ReadFile(filepath.Join(dir, "ip"))
	ip := net.ParseIP(strings.TrimSpace(string(raw)))
	if dir == "" || err != nil || ip == nil {
		http.Error(w, fmt.Sprintf("pod %q does not exist", pod), http.StatusNotFound)
		return
	}
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	portforward.ServePortForward(w, r, forwarder{ip.String()}, pod, types.UID(r.PathValue("uid")), opts,
		4*time.Hour, 30*time.Second, portforward.SupportedProtocols)
}

// tlsConfig serves certFile, and with a clientCA requires client certificates it signed (the
// API server's --kubelet-client-certificate).
func tlsConfig(certFile, keyFile, clientCA string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	// HTTP/1.1 only: the streaming protocols are connection upgrades.
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	if clientCA != "" {
		pem, err := os.ReadFile(clientCA)
		if cfg.ClientCAs = x509.NewCertPool(); err != nil || !cfg.ClientCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no CA certificate in %s (%v)", clientCA, err)
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	portFile := flag.String("port-file", "", "write the bound port to this file (atomically)")
	certFile := flag.String("tls-cert-file", "", "serving certificate (PEM); plain HTTP without")
	keyFile := flag.String("tls-private-key-file", "", "serving certificate's key (PEM)")
	clientCA := flag.String("client-ca-file", "", "require client certificates signed by this CA (PEM)")
	podsDir := flag.String("pods-dir", "", "the node agent's pods directory")
	withParent := flag.Bool("exit-with-parent", false, "exit when the parent process goes away")
	flag.Parse()
	log.SetPrefix("recc-kubelet: ")
	if *podsDir == "" || (*certFile == "") != (*keyFile == "") || (*clientCA != "" && *certFile == "") {
		log.Fatal("--pods-dir is required; --tls-cert-file and --tls-private-key-file go together, and --client-ca-file needs them")
	}
	s := &server{podsDir: *podsDir}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", s.containerLogs)
	mux.HandleFunc("/portForward/{namespace}/{pod}", s.portForward)
	mux.HandleFunc("/portForward/{namespace}/{pod}/{uid}", s.portForward)
	srv := &http.Server{ReadHeaderTimeout: 30 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Printf("%s %s from %s", r.Method, r.URL.RequestURI(), r.RemoteAddr)
		mux.ServeHTTP(w, r)
	})}

	ln, err := net.Listen("tcp", *listen)
	if err == nil && *certFile != "" {
		var cfg *tls.Config
		if cfg, err = tlsConfig(*certFile, *keyFile, *clientCA); err == nil {
			ln = tls.NewListener(ln, cfg)
		}
	}
	if err == nil && *portFile != "" { // written whole: a reader never sees half a port
		port := fmt.Sprintln(ln.Addr().(*net.TCPAddr).Port)
		if err = os.WriteFile(*portFile+".tmp", []byte(port), 0o644); err == nil {
			err = os.Rename(*portFile+".tmp", *portFile)
		}
	}
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("serving %s on %s", *podsDir, ln.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *withParent {
		parent := os.Getppid()
		go func() {
			for range time.Tick(time.Second) {
				if os.Getppid() != parent {
					log.Printf("parent %d is gone", parent)
					stop()
					return
				}
			}
		}()
	}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
	log.Print("stopped")
}
