package deb

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/tai-state/tai-state/packaging/internal/testbin"
)

const testVersion = "1.2.3"

// sidecar is tai-sidecar built once, as a release, with version testVersion.
var sidecar string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "deb-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		if sidecar, err = testbin.Build(filepath.Join(dir, "tai-sidecar"), testbin.ReleaseFlags(testVersion)...); err != nil {
			fmt.Fprintln(os.Stderr, "build tai-sidecar:", err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

func buildDeb(t *testing.T, bin string) string {
	t.Helper()
	o := Options{Binary: bin, Version: testVersion, Arch: runtime.GOARCH}
	name, err := FileName(o)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := Build(f, o); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestOptionsErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want error
	}{
		{"empty version", Options{Binary: "x", Arch: "amd64"}, ErrVersion},
		{"version with a letter first", Options{Binary: "x", Version: "latest", Arch: "amd64"}, ErrVersion},
		{"version with a space", Options{Binary: "x", Version: "1.0 beta", Arch: "amd64"}, ErrVersion},
		{"unknown arch", Options{Binary: "x", Version: "1.0.0", Arch: "sparc"}, ErrArch},
		{"no binary", Options{Version: "1.0.0", Arch: "amd64"}, ErrBinary},
		{"not an ELF file", Options{Binary: "deb.go", Version: "1.0.0", Arch: "amd64"}, ErrBinary},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := Build(&bytes.Buffer{}, tc.o); !errors.Is(err, tc.want) {
				t.Errorf("Build: %v, want %v", err, tc.want)
			}
		})
	}
}

func TestFileName(t *testing.T) {
	for _, tc := range []struct{ version, arch, want string }{
		{"1.2.3", "amd64", "tai-sidecar_1.2.3_amd64.deb"},
		{"v1.2.3", "arm64", "tai-sidecar_1.2.3_arm64.deb"},
		{"1.2.3-rc.1", "arm", "tai-sidecar_1.2.3~rc.1_armhf.deb"}, // a prerelease sorts before the release
		{"0.9", "386", "tai-sidecar_0.9.0_i386.deb"},              // versions are read as semver
	} {
		got, err := FileName(Options{Version: tc.version, Arch: tc.arch})
		if err != nil || got != tc.want {
			t.Errorf("FileName(%s, %s) = %q, %v; want %q", tc.version, tc.arch, got, err, tc.want)
		}
	}
}

// TestBinaryArchMismatch: a binary for one architecture is never packaged
// as another.
func TestBinaryArchMismatch(t *testing.T) {
	bin := sidecar
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	if err := Build(&bytes.Buffer{}, Options{Binary: bin, Version: "1.0.0", Arch: other}); !errors.Is(err, ErrBinary) {
		t.Errorf("Build with a %s binary as %s: %v, want ErrBinary", runtime.GOARCH, other, err)
	}
}

// TestMaintainerScriptsPOSIX: the scripts parse as POSIX sh (dash) and start
// with #!/bin/sh and set -e.
func TestMaintainerScriptsPOSIX(t *testing.T) {
	need(t, "dash")
	for name, body := range map[string][]byte{"postinst": postinst, "prerm": prerm, "postrm": postrm} {
		if !bytes.HasPrefix(body, []byte("#!/bin/sh\n")) || !bytes.Contains(body, []byte("\nset -e\n")) {
			t.Errorf("%s: want #!/bin/sh and set -e", name)
		}
		cmd := exec.Command("dash", "-n")
		cmd.Stdin = bytes.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: dash -n: %v\n%s", name, err, out)
		}
	}
}

// TestDebInspect checks the package with dpkg-deb: control fields, the
// conffile, the files and their modes.
func TestDebInspect(t *testing.T) {
	need(t, "dpkg-deb")
	deb := buildDeb(t, sidecar)
	arch, _ := DebArch(runtime.GOARCH)

	info := run(t, "dpkg-deb", "--info", deb)
	for _, want := range []string{
		"Package: tai-sidecar\n", "Version: " + testVersion + "\n", "Architecture: " + arch + "\n",
		"Maintainer: " + DefaultMaintainer + "\n", "postinst", "prerm", "postrm", "conffiles",
	} {
		if !strings.Contains(info, want) {
			t.Errorf("dpkg-deb --info lacks %q:\n%s", want, info)
		}
	}
	dir := t.TempDir()
	run(t, "dpkg-deb", "--control", deb, dir)
	if b, err := os.ReadFile(filepath.Join(dir, "conffiles")); err != nil || strings.TrimSpace(string(b)) != EnvFilePath {
		t.Errorf("conffiles = %q, %v; want %s", b, err, EnvFilePath)
	}

	contents := run(t, "dpkg-deb", "--contents", deb)
	for path, mode := range map[string]string{
		BinaryPath:  "-rwxr-xr-x root/root",
		UnitPath:    "-rw-r--r-- root/root",
		EnvFilePath: "-rw-r--r-- root/root",
	} {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(mode) + `\s+\d+ \S+ \S+ \.` + regexp.QuoteMeta(path) + `$`)
		if !re.MatchString(contents) {
			t.Errorf("dpkg-deb --contents: no %s %s in\n%s", mode, path, contents)
		}
	}
	if n := strings.Count(contents, "\n-"); n != 3 {
		t.Errorf("the package holds %d files, want 3:\n%s", n, contents)
	}
}

// newRoot makes a minimal system for dpkg --root: a dpkg database and the
// account files that useradd --prefix edits.
func newRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/updates", "var/lib/dpkg/info", "var/lib/dpkg/triggers", "etc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, body := range map[string]string{
		"var/lib/dpkg/status":    "",
		"var/lib/dpkg/available": "",
		"etc/passwd":             "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":              "root:x:0:\n",
		"etc/shadow":             "root:*:19000:0:99999:7:::\n",
		"etc/gshadow":            "root:*::\n",
	} {
		mode := os.FileMode(0o644)
		if strings.Contains(name, "shadow") {
			mode = 0o640
		}
		if err := os.WriteFile(filepath.Join(root, name), []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// dpkg runs dpkg on the throwaway root. The maintainer scripts run outside
// it (the root has no shell) with DPKG_ROOT set, as Debian's DPKG_ROOT
// support does; they must then touch only files under DPKG_ROOT.
func dpkg(t *testing.T, root string, args ...string) string {
	t.Helper()
	return run(t, "dpkg", append([]string{"--root=" + root, "--force-script-chrootless", "--force-not-root", "--log=/dev/null"}, args...)...)
}

// TestDebInstall installs the package with dpkg into a throwaway root,
// runs the installed binary, then reinstalls, removes and purges it.
func TestDebInstall(t *testing.T) {
	need(t, "dpkg", "useradd", "groupadd", "deb-systemd-helper")
	if os.Geteuid() != 0 {
		t.Skip("dpkg --root needs root to set file owners and to run useradd --prefix")
	}
	deb := buildDeb(t, sidecar)
	root := newRoot(t)
	at := func(p string) string { return filepath.Join(root, p) }

	dpkg(t, root, "--install", deb)
	if st := dpkg(t, root, "--status", Name); !strings.Contains(st, "Status: install ok installed") {
		t.Fatalf("dpkg --status:\n%s", st)
	}
	out := run(t, at(BinaryPath), "version")
	if out != "tai-sidecar "+testVersion+"\n" {
		t.Errorf("installed binary: version printed %q", out)
	}
	if out, _ := exec.Command(at(BinaryPath), "serve", "-h").CombinedOutput(); !bytes.Contains(out, []byte("-socket")) {
		t.Errorf("installed binary: serve -h printed\n%s", out)
	}
	for _, p := range []string{UnitPath, EnvFilePath} {
		if _, err := os.Stat(at(p)); err != nil {
			t.Error(err)
		}
	}

	// postinst: the system user and group tai, as the unit's User= needs.
	passwd, _ := os.ReadFile(at("etc/passwd"))
	m := regexp.MustCompile(`(?m)^tai:x:(\d+):(\d+):[^:]*:/var/lib/tai:/usr/sbin/nologin$`).FindSubmatch(passwd)
	if m == nil {
		t.Fatalf("no system user tai in /etc/passwd:\n%s", passwd)
	}
	if uid := string(m[1]); len(uid) > 3 { // system uids are below 1000
		t.Errorf("tai has uid %s, want a system uid", uid)
	}
	group, _ := os.ReadFile(at("etc/group"))
	if !regexp.MustCompile(`(?m)^tai:x:` + string(m[2]) + `:$`).Match(group) {
		t.Errorf("no group tai with gid %s in /etc/group:\n%s", m[2], group)
	}
	// postinst: the unit is enabled, without a running systemd.
	link := at("etc/systemd/system/multi-user.target.wants/tai-sidecar.service")
	if target, err := os.Readlink(link); err != nil || target != UnitPath {
		t.Errorf("enable symlink: %q, %v; want -> %s", target, err, UnitPath)
	}

	// Reinstall over an edited conffile: postinst runs again without
	// failing or adding a second user, and the admin's edit is kept.
	edited := []byte("TAI_LOG_LEVEL=debug\n")
	if err := os.WriteFile(at(EnvFilePath), edited, 0o644); err != nil {
		t.Fatal(err)
	}
	dpkg(t, root, "--force-confold", "--install", deb)
	passwd, _ = os.ReadFile(at("etc/passwd"))
	if n := strings.Count(string(passwd), "\ntai:"); n != 1 {
		t.Errorf("%d users tai after reinstalling", n)
	}
	if b, _ := os.ReadFile(at(EnvFilePath)); !bytes.Equal(b, edited) {
		t.Errorf("reinstall replaced the edited %s with\n%s", EnvFilePath, b)
	}

	dpkg(t, root, "--remove", Name)
	if _, err := os.Stat(at(BinaryPath)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after remove: %s: %v", BinaryPath, err)
	}
	if _, err := os.Stat(at(EnvFilePath)); err != nil {
		t.Errorf("remove must keep the conffile: %v", err)
	}
	dpkg(t, root, "--purge", Name)
	for _, p := range []string{EnvFilePath, "etc/systemd/system/multi-user.target.wants/tai-sidecar.service"} {
		if _, err := os.Lstat(at(p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after purge: %s: %v", p, err)
		}
	}
	if st, _ := exec.Command("dpkg", "--root="+root, "--status", Name).CombinedOutput(); bytes.Contains(st, []byte("Status: install ok installed")) {
		t.Errorf("after purge, dpkg --status:\n%s", st)
	}
}
