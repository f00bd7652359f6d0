// Command kube-testbed runs a throwaway Kubernetes control plane for tests: an embedded etcd
// and a real kube-apiserver in one process, listening on 127.0.0.1 only.
//
// Contract (what testbed/apiserver.py relies on):
//
//   - Everything the process writes lives under --data-dir: etcd data, the generated serving
//     certificate (cert/apiserver.crt, which also carries its self-signed CA), the
//     service-account key, the token file and endpoints.json.
//   - endpoints.json is written atomically once etcd is serving and the API server's port is
//     chosen, before the API server starts. It holds {"pid", "url", "etcd_url", "ca_file"}.
//     Readiness is /readyz on "url"; endpoints.json only says where to look.
//   - The token in --admin-token-file authenticates user "testbed-admin" in group
//     system:masters. Authorization is RBAC, so any other identity (a service account, an
//     impersonated user) gets only what RBAC grants it.
//   - A port given as 0 is picked free by this process. Picking and binding are not atomic;
//     if another process wins the port, this one exits non-zero and the caller may retry.
//   - SIGTERM or SIGINT shuts the API server down, then etcd; exit status 0 on a clean stop.
//     With --exit-with-parent the same happens when the starting process goes away.
//   - Arguments after "--" are appended to kube-apiserver's own flags and so override the
//     defaults below (e.g. "-- --etcd-compaction-interval=10s").
//   - etcd's client URL ("etcd_url") serves etcd's JSON gateway, so a test can force a
//     compaction with POST {etcd_url}/v3/kv/compaction.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

// adminUser is the identity behind the admin token; the group is what grants everything.
const (
	adminUser  = "testbed-admin"
	adminGroup = "system:masters"
)

type settings struct {
	dataDir        string
	adminTokenFile string
	securePort     int
	etcdPort       int
	etcdPeerPort   int
	withParent     bool
	saAdmission    bool
	extraArgs      []string
}

func parseSettings(argv []string) (settings, error) {
	var s settings
	fs := flag.NewFlagSet("kube-testbed", flag.ContinueOnError)
	fs.StringVar(&s.dataDir, "data-dir", "", "directory for all state (required; created if missing)")
	fs.StringVar(&s.adminTokenFile, "admin-token-file", "", "file holding the admin bearer token (required)")
	fs.IntVar(&s.securePort, "secure-port", 0, "kube-apiserver HTTPS port on 127.0.0.1 (0 = pick a free one)")
	fs.IntVar(&s.etcdPort, "etcd-port", 0, "etcd client port on 127.0.0.1 (0 = pick a free one)")
	fs.IntVar(&s.etcdPeerPort, "etcd-peer-port", 0, "etcd peer port on 127.0.0.1 (0 = pick a free one)")
	fs.BoolVar(&s.withParent, "exit-with-parent", false, "shut down when the starting process exits")
	fs.BoolVar(&s.saAdmission, "service-account-admission", false,
		"keep the ServiceAccount admission plugin (pods get their token volume); only with a controller-manager that creates service accounts")
	if err := fs.Parse(argv); err != nil {
		return s, err
	}
	s.extraArgs = fs.Args()
	if s.dataDir == "" || s.adminTokenFile == "" {
		return s, fmt.Errorf("--data-dir and --admin-token-file are required")
	}
	var err error
	if s.dataDir, err = filepath.Abs(s.dataDir); err != nil {
		return s, err
	}
	for _, p := range []*int{&s.securePort, &s.etcdPort, &s.etcdPeerPort} {
		if *p == 0 {
			if *p, err = freePort(); err != nil {
				return s, err
			}
		}
	}
	return s, nil
}

// freePort asks the kernel for an unused loopback port. The port is released before use, so
// a concurrent process can take it first; that surfaces as a bind error and a non-zero exit.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(argv []string) int {
	s, err := parseSettings(argv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-testbed:", err)
		return 2
	}
	if s.withParent {
		exitWithParent()
	}
	if err := os.MkdirAll(s.dataDir, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "kube-testbed:", err)
		return 1
	}
	files, err := prepareFiles(s)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-testbed:", err)
		return 1
	}
	etcd, etcdURL, err := startEtcd(filepath.Join(s.dataDir, "etcd"), s.etcdPort, s.etcdPeerPort)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-testbed: etcd:", err)
		return 1
	}
	// etcd must outlive the API server, whose shutdown still talks to it.
	defer etcd.Close()

	endpoints := map[string]any{
		"pid":      os.Getpid(),
		"url":      "https://127.0.0.1:" + strconv.Itoa(s.securePort),
		"etcd_url": etcdURL,
		"ca_file":  files.servingCert,
	}
	if err := writeJSONAtomically(filepath.Join(s.dataDir, "endpoints.json"), endpoints); err != nil {
		fmt.Fprintln(os.Stderr, "kube-testbed:", err)
		return 1
	}

	cmd := app.NewAPIServerCommand()
	cmd.SetArgs(append(apiserverArgs(s, files, etcdURL), s.extraArgs...))
	// cli.Run sets up logging and returns only once the API server has stopped (on a signal,
	// via the command's own signal context) or failed to start.
	return cli.Run(cmd)
}

func apiserverArgs(s settings, f files, etcdURL string) []string {
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		// With no default route the server cannot guess an address to advertise.
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(s.securePort),
		"--cert-dir=" + f.certDir,
		"--authorization-mode=RBAC",
		"--token-auth-file=" + f.tokenCSV,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + f.saKey,
		"--service-account-signing-key-file=" + f.saKey,
		"--service-cluster-ip-range=10.0.0.0/24",
		// No controller-manager reconciles endpoints.
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
	}
	if !s.saAdmission {
		// Without a controller-manager nothing creates the default service accounts, and
		// this plugin would refuse every pod naming one that does not exist.
		args = append(args, "--disable-admission-plugins=ServiceAccount")
	}
	return args
}

type files struct {
	certDir     string
	servingCert string
	tokenCSV    string
	saKey       string
}

func prepareFiles(s settings) (files, error) {
	f := files{
		certDir:  filepath.Join(s.dataDir, "cert"),
		tokenCSV: filepath.Join(s.dataDir, "tokens.csv"),
		saKey:    filepath.Join(s.dataDir, "service-account.key"),
	}
	// kube-apiserver names its self-signed pair after --cert-dir like this.
	f.servingCert = filepath.Join(f.certDir, "apiserver.crt")
	raw, err := os.ReadFile(s.adminTokenFile)
	if err != nil {
		return f, fmt.Errorf("reading admin token: %w", err)
	}
	token := strings.TrimSpace(string(raw))
	if token == "" || strings.ContainsAny(token, ",\"\n ") {
		return f, fmt.Errorf("admin token in %s is empty or contains ',', '\"' or whitespace", s.adminTokenFile)
	}
	csv := fmt.Sprintf("%s,%s,%s,\"%s\"\n", token, adminUser, adminUser, adminGroup)
	if err := os.WriteFile(f.tokenCSV, []byte(csv), 0o600); err != nil {
		return f, err
	}
	if err := os.MkdirAll(f.certDir, 0o700); err != nil {
		return f, err
	}
	if err := writeServiceAccountKey(f.saKey); err != nil {
		return f, fmt.Errorf("service-account key: %w", err)
	}
	return f, nil
}

func writeJSONAtomically(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
