package packaging

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/packaging/internal/testbin"
)

// unitFile is a parsed systemd unit: section -> key -> every assignment in
// order (an empty one resets a list setting).
type unitFile map[string]map[string][]string

// parseUnit reads systemd's unit file syntax: [Section] headers, Key=Value
// lines, # and ; comments, and lines continued with a trailing backslash.
func parseUnit(data []byte) (unitFile, error) {
	u := unitFile{}
	var section string
	sc := bufio.NewScanner(bytes.NewReader(data))
	lineNo := 0
	var cont string
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		if cont == "" && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			cont += strings.TrimSuffix(line, `\`) + " "
			continue
		}
		line, cont = cont+line, ""
		if strings.HasPrefix(line, "[") {
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("line %d: bad section header %q", lineNo, line)
			}
			section = line[1 : len(line)-1]
			if u[section] != nil {
				return nil, fmt.Errorf("line %d: section [%s] appears twice", lineNo, section)
			}
			u[section] = map[string][]string{}
			continue
		}
		if section == "" {
			return nil, fmt.Errorf("line %d: assignment outside a section", lineNo)
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: no '=' in %q", lineNo, line)
		}
		key = strings.TrimSpace(key)
		u[section][key] = append(u[section][key], strings.TrimSpace(val))
	}
	if cont != "" {
		return nil, fmt.Errorf("file ends in a continued line")
	}
	return u, sc.Err()
}

// last returns the effective value of a single-valued setting.
func (u unitFile) last(section, key string) (string, bool) {
	v := u[section][key]
	if len(v) == 0 {
		return "", false
	}
	return v[len(v)-1], true
}

func loadUnit(t *testing.T) unitFile {
	t.Helper()
	u, err := parseUnit(SystemdUnit())
	if err != nil {
		t.Fatalf("tai-sidecar.service: %v", err)
	}
	return u
}

func TestUnitParser(t *testing.T) {
	u, err := parseUnit([]byte("# c\n[A]\nK=1\n; c\nK=2\nL=x \\\n  y\nE=\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := u["A"]["K"]; len(got) != 2 || got[1] != "2" {
		t.Errorf("K = %q", got)
	}
	if got, _ := u.last("A", "L"); got != "x  y" {
		t.Errorf("L = %q", got)
	}
	if got, ok := u.last("A", "E"); !ok || got != "" {
		t.Errorf("E = %q, %v", got, ok)
	}
	for _, bad := range []string{"K=1\n", "[A]\nnoequals\n", "[A\n", "[A]\n[A]\n", "[A]\nK=\\\n"} {
		if _, err := parseUnit([]byte(bad)); err == nil {
			t.Errorf("parseUnit(%q) succeeded", bad)
		}
	}
}

func TestUnitHardening(t *testing.T) {
	u := loadUnit(t)
	want := map[string]string{
		"Type":                    "exec", // the daemon does not speak sd_notify
		"User":                    "tai",
		"Group":                   "tai",
		"EnvironmentFile":         "-/etc/default/tai-sidecar",
		"Restart":                 "on-failure",
		"KillSignal":              "SIGTERM",
		"RuntimeDirectory":        "tai",
		"RuntimeDirectoryMode":    "0750",
		"StateDirectory":          "tai",
		"StateDirectoryMode":      "0700",
		"UMask":                   "0027",
		"NoNewPrivileges":         "yes",
		"CapabilityBoundingSet":   "",
		"AmbientCapabilities":     "",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"ProtectKernelTunables":   "yes",
		"ProtectKernelModules":    "yes",
		"ProtectKernelLogs":       "yes",
		"ProtectControlGroups":    "yes",
		"ProtectClock":            "yes",
		"ProtectHostname":         "yes",
		"RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", // TCP for the remote store
		"RestrictNamespaces":      "yes",
		"RestrictRealtime":        "yes",
		"RestrictSUIDSGID":        "yes",
		"LockPersonality":         "yes",
		"MemoryDenyWriteExecute":  "yes",
		"SystemCallArchitectures": "native",
	}
	for key, w := range want {
		got, ok := u.last("Service", key)
		if !ok || got != w {
			t.Errorf("[Service] %s = %q (set: %v), want %q", key, got, ok, w)
		}
	}
	for _, key := range []string{"RestartSec", "TimeoutStopSec", "LimitNOFILE"} {
		if v, ok := u.last("Service", key); !ok || v == "" {
			t.Errorf("[Service] %s is not set", key)
		}
	}
	if filters := u["Service"]["SystemCallFilter"]; len(filters) == 0 || filters[0] != "@system-service" {
		t.Errorf("SystemCallFilter = %q, want @system-service first", filters)
	}
	if v, _ := u.last("Install", "WantedBy"); v != "multi-user.target" {
		t.Errorf("WantedBy = %q", v)
	}
	// Settings that would break the daemon or that it does not support.
	for _, key := range []string{"DynamicUser", "PrivateNetwork", "ReadOnlyPaths", "NotifyAccess", "WatchdogSec"} {
		if _, ok := u.last("Service", key); ok {
			t.Errorf("[Service] %s is set", key)
		}
	}
}

// TestUnitExecStart checks the command line against the real binary: its
// flags exist, the socket is in the RuntimeDirectory and the store in the
// StateDirectory.
func TestUnitExecStart(t *testing.T) {
	u := loadUnit(t)
	exec, _ := u.last("Service", "ExecStart")
	args := strings.Fields(exec)
	if len(args) < 2 || args[0] != "/usr/bin/tai-sidecar" || args[1] != "serve" {
		t.Fatalf("ExecStart = %q, want /usr/bin/tai-sidecar serve ...", exec)
	}
	vals := checkServeArgs(t, args[2:])
	rt, _ := u.last("Service", "RuntimeDirectory")
	if sock := vals["socket"]; !strings.HasPrefix(sock, "%t/"+rt+"/") {
		t.Errorf("--socket %q is not in the RuntimeDirectory %%t/%s", sock, rt)
	}
	st, _ := u.last("Service", "StateDirectory")
	if dir := vals["data-dir"]; dir != "%S/"+st {
		t.Errorf("--data-dir %q is not the StateDirectory %%S/%s", dir, st)
	}
}

var defaultDuration = regexp.MustCompile(`\(default ([0-9a-z.]+)\)`)

// TestUnitStopTimeout: systemd must not SIGKILL a graceful shutdown, which
// takes up to --shutdown-timeout for requests plus as much to close the
// store.
func TestUnitStopTimeout(t *testing.T) {
	u := loadUnit(t)
	m := defaultDuration.FindStringSubmatch(serveFlags["shutdown-timeout"])
	if m == nil {
		t.Fatalf("no default in the help of --shutdown-timeout: %q", serveFlags["shutdown-timeout"])
	}
	shutdown, err := time.ParseDuration(m[1])
	if err != nil {
		t.Fatal(err)
	}
	v, _ := u.last("Service", "TimeoutStopSec")
	stop, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("TimeoutStopSec=%q: %v", v, err)
	}
	if stop < 2*shutdown+5*time.Second {
		t.Errorf("TimeoutStopSec=%s leaves no room for a graceful stop of 2 x %s", stop, shutdown)
	}
}

// TestEnvFile checks /etc/default/tai-sidecar against `serve -h`: every
// variable it names exists, every one a user may set is documented, and
// the example values are the real defaults.
func TestEnvFile(t *testing.T) {
	known := testbin.EnvVars(serveFlags)
	if len(known) < 5 {
		t.Fatalf("serve -h names only %d TAI_* variables: %v", len(known), known)
	}
	documented := map[string]bool{}
	line := regexp.MustCompile(`^#?(TAI_[A-Z0-9_]+)=(.*)$`)
	for _, l := range strings.Split(string(EnvFile()), "\n") {
		m := line.FindStringSubmatch(strings.TrimSpace(l))
		if m == nil {
			if strings.Contains(l, "=") && !strings.HasPrefix(strings.TrimSpace(l), "#") {
				t.Errorf("line %q is not a TAI_* assignment", l)
			}
			continue
		}
		name, val := m[1], m[2]
		documented[name] = true
		flag, ok := known[name]
		if !ok {
			t.Errorf("%s: serve -h names no such variable", name)
			continue
		}
		if val == "" {
			continue
		}
		def := regexp.MustCompile(`\(default "?([^")]*)"?\)`).FindStringSubmatch(serveFlags[flag])
		if def == nil || def[1] != val {
			t.Errorf("%s=%s: --%s's default is %v", name, val, flag, def)
		}
	}
	// The settings every release has; the socket and the data dir are set
	// by ExecStart. Every other variable must be documented too (below).
	for _, name := range []string{"TAI_NODE_ID", "TAI_LOG_LEVEL", "TAI_LOG_FORMAT", "TAI_CACHE_BYTES", "TAI_MEMORY_LIMIT", "TAI_MAX_FRAME"} {
		if !documented[name] {
			t.Errorf("%s is not documented in /etc/default/tai-sidecar", name)
		}
	}
	for name := range known {
		if !documented[name] && name != "TAI_SOCKET" && name != "TAI_DATA_DIR" {
			t.Errorf("%s is not documented in /etc/default/tai-sidecar", name)
		}
	}
}

// TestSystemdAnalyze runs systemd's own checks on the unit, with ExecStart
// pointing at the freshly built binary.
func TestSystemdAnalyze(t *testing.T) {
	tool, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian package systemd)")
	}
	dir := t.TempDir()
	unit := filepath.Join(dir, "tai-sidecar.service")
	data := bytes.Replace(SystemdUnit(), []byte("ExecStart=/usr/bin/tai-sidecar "), []byte("ExecStart="+sidecar+" "), 1)
	if err := os.WriteFile(unit, data, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Run("verify", func(t *testing.T) {
		out, err := exec.Command(tool, "verify", unit).CombinedOutput()
		if err != nil || bytes.Contains(out, []byte("tai-sidecar.service")) {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	})
	t.Run("security", func(t *testing.T) {
		// Exposure is 0 (locked down) to 10 (unprotected); the threshold
		// is in tenths. Network access and the host's root directory
		// account for most of what remains.
		out, err := exec.Command(tool, "security", "--offline=yes", "--threshold=20", "--no-pager", unit).CombinedOutput()
		if err != nil {
			t.Errorf("systemd-analyze security: exposure above 2.0: %v\n%s", err, out)
		}
		t.Logf("%s", lastLine(out))
	})
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
