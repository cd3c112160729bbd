package packaging

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/tai-state/tai-state/packaging/internal/testbin"
)

// manifests are the decoded objects of packaging/kubernetes/*.yaml.
type manifests struct {
	deployment     *appsv1.Deployment
	configMaps     map[string]*corev1.ConfigMap
	serviceAccount map[string]*corev1.ServiceAccount
}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

// decodeStrict decodes one YAML document into the API type its apiVersion
// and kind name, refusing unknown and duplicate fields.
func decodeStrict(doc []byte) (any, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	var obj any
	switch tm.APIVersion + "/" + tm.Kind {
	case "apps/v1/Deployment":
		obj = &appsv1.Deployment{}
	case "v1/ConfigMap":
		obj = &corev1.ConfigMap{}
	case "v1/ServiceAccount":
		obj = &corev1.ServiceAccount{}
	default:
		return nil, fmt.Errorf("unexpected object %s %s", tm.APIVersion, tm.Kind)
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	return obj, nil
}

func loadManifests(t *testing.T) *manifests {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("kubernetes", "*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	m := &manifests{configMaps: map[string]*corev1.ConfigMap{}, serviceAccount: map[string]*corev1.ServiceAccount{}}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range docSeparator.Split(string(data), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			obj, err := decodeStrict([]byte(doc))
			if err != nil {
				t.Fatalf("%s, document %d: %v", p, i+1, err)
			}
			switch o := obj.(type) {
			case *appsv1.Deployment:
				if m.deployment != nil {
					t.Fatalf("%s: a second Deployment", p)
				}
				m.deployment = o
			case *corev1.ConfigMap:
				m.configMaps[o.Name] = o
			case *corev1.ServiceAccount:
				m.serviceAccount[o.Name] = o
			}
		}
	}
	if m.deployment == nil {
		t.Fatal("no Deployment among the manifests")
	}
	return m
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// TestManifestsStrict: the decoder really is strict, so the invariants below
// are checked on exactly what Kubernetes would read.
func TestManifestsStrict(t *testing.T) {
	loadManifests(t)
	for name, doc := range map[string]string{
		"unknown field":   "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndatta: {}\n",
		"duplicate field": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\nmetadata: {name: y}\n",
		"wrong type":      "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: two}\n",
		"wrong bool":      "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x}\nautomountServiceAccountToken: maybe\n",
		"unknown kind":    "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n",
	} {
		if _, err := decodeStrict([]byte(doc)); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}

// sidecarAndApps returns the tai-sidecar init container and the app
// containers of the Deployment.
func sidecarAndApps(t *testing.T, d *appsv1.Deployment) (*corev1.Container, []corev1.Container) {
	t.Helper()
	spec := &d.Spec.Template.Spec
	if len(spec.InitContainers) != 1 || spec.InitContainers[0].Name != "tai-sidecar" {
		t.Fatalf("want one init container tai-sidecar, got %d", len(spec.InitContainers))
	}
	if len(spec.Containers) == 0 {
		t.Fatal("no app container")
	}
	return &spec.InitContainers[0], spec.Containers
}

func mountOf(c *corev1.Container, volume string) (corev1.VolumeMount, bool) {
	for _, m := range c.VolumeMounts {
		if m.Name == volume {
			return m, true
		}
	}
	return corev1.VolumeMount{}, false
}

func volumeOf(d *appsv1.Deployment, name string) *corev1.Volume {
	for i := range d.Spec.Template.Spec.Volumes {
		if v := &d.Spec.Template.Spec.Volumes[i]; v.Name == name {
			return v
		}
	}
	return nil
}

// volumeAt returns the volume mounted at the directory holding path.
func volumeAt(c *corev1.Container, path string) (corev1.VolumeMount, bool) {
	for _, m := range c.VolumeMounts {
		if path == m.MountPath || strings.HasPrefix(path, m.MountPath+"/") {
			return m, true
		}
	}
	return corev1.VolumeMount{}, false
}

func TestDeploymentNativeSidecar(t *testing.T) {
	m := loadManifests(t)
	d := m.deployment
	sc, apps := sidecarAndApps(t, d)
	if sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("init container %s: restartPolicy %v, want Always (a native sidecar)", sc.Name, sc.RestartPolicy)
	}
	if len(sc.Command) < 2 || filepath.Base(sc.Command[0]) != "tai-sidecar" || sc.Command[1] != "serve" {
		t.Fatalf("sidecar command %q, want tai-sidecar serve ...", sc.Command)
	}
	vals := checkServeArgs(t, append(slices.Clone(sc.Command[2:]), sc.Args...))

	// The socket: on an in-memory emptyDir mounted at the same path in
	// every container, and named the same way to the apps.
	sock := vals["socket"]
	sm, ok := volumeAt(sc, sock)
	if !ok || filepath.Dir(sock) != sm.MountPath {
		t.Fatalf("--socket %s is not directly in a volume of the sidecar", sock)
	}
	if v := volumeOf(d, sm.Name); v == nil || v.EmptyDir == nil || v.EmptyDir.Medium != corev1.StorageMediumMemory {
		t.Errorf("socket volume %s: want an emptyDir with medium Memory", sm.Name)
	}
	for _, app := range apps {
		am, ok := mountOf(&app, sm.Name)
		if !ok || am.MountPath != sm.MountPath {
			t.Errorf("app %s: socket volume %s mounted at %q, want %q", app.Name, sm.Name, am.MountPath, sm.MountPath)
		}
		var env string
		for _, e := range app.Env {
			if e.Name == "TAI_SOCKET" {
				env = e.Value
			}
		}
		if env != sock {
			t.Errorf("app %s: TAI_SOCKET=%q, want %q", app.Name, env, sock)
		}
		if _, ok := volumeAt(&app, vals["data-dir"]); ok {
			t.Errorf("app %s mounts the sidecar's store", app.Name)
		}
	}

	// The store: a disk-backed volume of its own (see the comment in
	// deployment.yaml for why an emptyDir).
	dm, ok := volumeAt(sc, vals["data-dir"])
	if !ok || dm.Name == sm.Name {
		t.Fatalf("--data-dir %s is not on a volume of its own", vals["data-dir"])
	}
	if v := volumeOf(d, dm.Name); v == nil || (v.EmptyDir == nil && v.PersistentVolumeClaim == nil) ||
		(v.EmptyDir != nil && (v.EmptyDir.Medium == corev1.StorageMediumMemory || v.EmptyDir.SizeLimit == nil)) {
		t.Errorf("data volume %s: want a disk emptyDir with a sizeLimit, or a PVC", dm.Name)
	}

	// Configuration: every variable the ConfigMap sets exists.
	known := map[string]bool{}
	for name := range testbin.EnvVars(serveFlags) {
		known[name] = true
	}
	for _, ef := range sc.EnvFrom {
		if ef.ConfigMapRef == nil {
			continue
		}
		cm, ok := m.configMaps[ef.ConfigMapRef.Name]
		if !ok {
			t.Errorf("envFrom ConfigMap %s is not among the manifests", ef.ConfigMapRef.Name)
			continue
		}
		for k := range cm.Data {
			if !known[k] {
				t.Errorf("ConfigMap %s: %s is not a variable of tai-sidecar serve", cm.Name, k)
			}
		}
	}
	for _, e := range sc.Env {
		if strings.HasPrefix(e.Name, "TAI_") && !known[e.Name] {
			t.Errorf("sidecar env %s is not a variable of tai-sidecar serve", e.Name)
		}
	}
	if sa := d.Spec.Template.Spec.ServiceAccountName; m.serviceAccount[sa] == nil {
		t.Errorf("serviceAccountName %q is not among the manifests", sa)
	}

	// Shutdown: the grace period covers the sidecar's graceful stop.
	if g := d.Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || *g < 25 {
		t.Errorf("terminationGracePeriodSeconds %v: want >= 25 (2 x --shutdown-timeout + slack)", g)
	}
}

func TestDeploymentProbesAndResources(t *testing.T) {
	d := loadManifests(t).deployment
	sc, apps := sidecarAndApps(t, d)
	for name, p := range map[string]*corev1.Probe{"startup": sc.StartupProbe, "readiness": sc.ReadinessProbe, "liveness": sc.LivenessProbe} {
		if p == nil || p.Exec == nil {
			t.Errorf("sidecar has no exec %s probe", name)
			continue
		}
		cmd := p.Exec.Command
		if len(cmd) < 2 || cmd[0] != sc.Command[0] || cmd[len(cmd)-1] != "ping" {
			t.Errorf("%s probe %q: want %s ... ping", name, cmd, sc.Command[0])
		}
		if p.TimeoutSeconds < 1 || p.PeriodSeconds < 1 || p.FailureThreshold < 1 {
			t.Errorf("%s probe: timeout %d, period %d, failures %d", name, p.TimeoutSeconds, p.PeriodSeconds, p.FailureThreshold)
		}
	}
	for _, c := range append([]corev1.Container{*sc}, apps...) {
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, okReq := c.Resources.Requests[res]
			lim, okLim := c.Resources.Limits[res]
			if !okReq || !okLim || req.Cmp(lim) > 0 {
				t.Errorf("container %s: %s request %v limit %v: want both, request <= limit", c.Name, res, req.String(), lim.String())
			}
		}
		if strings.HasSuffix(c.Image, ":latest") || !strings.Contains(c.Image, ":") {
			t.Errorf("container %s: image %q has no fixed tag", c.Name, c.Image)
		}
	}
}

func TestDeploymentSecurity(t *testing.T) {
	d := loadManifests(t).deployment
	spec := d.Spec.Template.Spec
	sc, apps := sidecarAndApps(t, d)
	pod := spec.SecurityContext
	if pod == nil || pod.RunAsNonRoot == nil || !*pod.RunAsNonRoot {
		t.Error("pod securityContext: runAsNonRoot is not true")
	}
	if pod == nil || pod.SeccompProfile == nil || pod.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod securityContext: seccompProfile is not RuntimeDefault")
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("the pod mounts a service account token it does not use")
	}
	for _, c := range append([]corev1.Container{*sc}, apps...) {
		s := c.SecurityContext
		if s == nil {
			t.Errorf("container %s: no securityContext", c.Name)
			continue
		}
		switch {
		case s.RunAsNonRoot == nil || !*s.RunAsNonRoot:
			t.Errorf("container %s: runAsNonRoot is not true", c.Name)
		case s.RunAsUser == nil || *s.RunAsUser == 0:
			t.Errorf("container %s: no non-root runAsUser", c.Name)
		case s.AllowPrivilegeEscalation == nil || *s.AllowPrivilegeEscalation:
			t.Errorf("container %s: allowPrivilegeEscalation is not false", c.Name)
		case s.ReadOnlyRootFilesystem == nil || !*s.ReadOnlyRootFilesystem:
			t.Errorf("container %s: readOnlyRootFilesystem is not true", c.Name)
		case s.Capabilities == nil || !slices.Equal(s.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(s.Capabilities.Add) > 0:
			t.Errorf("container %s: capabilities are not drop [ALL]", c.Name)
		case s.Privileged != nil && *s.Privileged:
			t.Errorf("container %s is privileged", c.Name)
		}
		// The socket has mode 0660: an app reaches it through the group.
		gid := s.RunAsGroup
		if gid == nil && pod != nil {
			gid = pod.RunAsGroup
		}
		if gid == nil || *gid == 0 {
			t.Errorf("container %s: no shared non-root group for the socket", c.Name)
		}
	}
}

// remap rewrites the container paths in args to directories under root, as
// the pod's volumes would provide them.
func remap(args []string, mounts map[string]string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		for from, to := range mounts {
			if a == from || strings.HasPrefix(a, from+"/") {
				out[i] = to + strings.TrimPrefix(a, from)
			}
		}
	}
	return out
}

// TestDeploymentRunsLocally runs the manifest's sidecar command, its
// environment and its probes against the real binary, with the volumes as
// local directories, then the example app against it, then stops the
// sidecar as the kubelet would.
func TestDeploymentRunsLocally(t *testing.T) {
	m := loadManifests(t)
	d := m.deployment
	sc, apps := sidecarAndApps(t, d)
	root := t.TempDir()
	mounts := map[string]string{}
	for _, vm := range sc.VolumeMounts {
		dir := filepath.Join(root, vm.Name)
		if err := os.MkdirAll(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		mounts[vm.MountPath] = dir
	}
	bin := func(args []string) []string { // the image's binary is the one built here
		out := remap(args, mounts)
		if out[0] == sc.Command[0] {
			out[0] = sidecar
		}
		return out
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "TAI_NODE_ID=tai-example-7d4b9c8f6d-x2x7k"}
	for _, ef := range sc.EnvFrom {
		for k, v := range m.configMaps[ef.ConfigMapRef.Name].Data {
			env = append(env, k+"="+v)
		}
	}

	args := bin(sc.Command)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = env
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cmd.Process.Kill()
			<-done
		}
	})

	probe := func(p *corev1.Probe) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(p.TimeoutSeconds)*time.Second)
		defer cancel()
		a := bin(p.Exec.Command)
		out, err := exec.CommandContext(ctx, a[0], a[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%q: %v: %s", a, err, out)
		}
		return nil
	}
	// The startup probe, as the kubelet runs it: every period, up to the
	// failure threshold.
	var err error
	for i := int32(0); i < sc.StartupProbe.FailureThreshold; i++ {
		if err = probe(sc.StartupProbe); err == nil {
			break
		}
		select {
		case werr := <-done:
			t.Fatalf("sidecar exited: %v\n%s", werr, logs.Bytes())
		case <-time.After(time.Duration(sc.StartupProbe.PeriodSeconds) * time.Second):
		}
	}
	if err != nil {
		t.Fatalf("startup probe never passed: %v\n%s", err, logs.Bytes())
	}
	for name, p := range map[string]*corev1.Probe{"readiness": sc.ReadinessProbe, "liveness": sc.LivenessProbe} {
		if err := probe(p); err != nil {
			t.Errorf("%s probe: %v", name, err)
		}
	}

	t.Run("example app", func(t *testing.T) { runExampleApp(t, apps[0], mounts) })

	// The kubelet stops a sidecar with SIGTERM and waits the grace period.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		stopped = true
		if err != nil {
			t.Errorf("sidecar exited with %v after SIGTERM\n%s", err, logs.Bytes())
		}
	case <-time.After(time.Duration(*d.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second):
		t.Errorf("sidecar still running after the grace period\n%s", logs.Bytes())
	}
}

// runExampleApp runs example-app/app.py as its image lays it out, with the
// app container's environment, twice: the counter goes on where it stopped.
func runExampleApp(t *testing.T, app corev1.Container, mounts map[string]string) {
	const python = "/usr/bin/python3"
	if err := exec.Command(python, "-c", "import msgpack").Run(); err != nil {
		t.Skipf("%s with msgpack is not installed (Debian package python3-msgpack): %v", python, err)
	}
	dir, err := testbin.MainModuleDir()
	if err != nil {
		t.Fatal(err)
	}
	appDir := t.TempDir()
	for src, dst := range map[string]string{
		filepath.Join(dir, "examples", "python", "tai_client.py"): filepath.Join(appDir, "tai_client.py"),
		filepath.Join("kubernetes", "example-app", "app.py"):      filepath.Join(appDir, "app.py"),
	} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	env := []string{"PATH=" + os.Getenv("PATH")}
	for _, e := range app.Env {
		env = append(env, e.Name+"="+remap([]string{e.Value}, mounts)[0])
	}
	host, _ := os.Hostname()
	for run, want := range [][]string{{"1", "2", "3"}, {"4", "5"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, python, filepath.Join(appDir, "app.py"), "--iterations", fmt.Sprint(len(want)), "--interval", "0")
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("run %d: %v\n%s", run+1, err, out)
		}
		for _, n := range want {
			if line := fmt.Sprintf("example/visits-%s = %s\n", host, n); !bytes.Contains(out, []byte(line)) {
				t.Errorf("run %d: no line %q in\n%s", run+1, line, out)
			}
		}
	}
}
