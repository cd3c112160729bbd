package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
)

// TestGuide runs every example of docs/guide.md against the real binary and
// checks the output the guide shows. The guide's conventions (an HTML
// comment at its top says the same):
//
//   - A ```console block is a shell session: each line starting with "$ "
//     is a command (a line ending with "\" continues it), run by bash with
//     tai-sidecar on PATH; the lines up to the next command are its output,
//     stdout and stderr together.
//   - A ```go block is a complete program and a ```python block a script
//     using examples/python's client; the ```text block right after it is
//     its output.
//   - In shown output, a line "..." stands for any lines (none included),
//     and inside a line <...> stands for any text, <N> for a number, <TIME>
//     for an RFC 3339 time and <ID> for an id (letters, digits, ".-_~").
//   - env=local (the default) runs a block in a directory where a local-only
//     sidecar serves ./tai.sock (started as `tai-sidecar serve`); env=shared
//     in one where three sidecars share one Firestore root (the emulator):
//     a.sock (node-a), b.sock (node-b) and edge.sock (node-edge, whose link
//     to Firestore goes through a proxy). Every sidecar pulls the governors
//     orders, reports and readings.
//   - A block with file=NAME is written to NAME in its env's directory
//     before the next block runs.
//   - <!-- guide: cut edge --> and <!-- guide: restore edge --> cut and
//     restore the edge node's link to Firestore.
//   - <!-- guide: start NAME [link=edge] [FLAG...] --> starts one more
//     sidecar of env shared on an empty data directory: NAME.sock
//     (node-NAME), with the others' Firestore settings, the flags given and
//     --admin-addr unix:NAME-admin.sock, and waits until its /readyz
//     answers 200 (its first pull of every governor is done). With
//     link=edge its link to Firestore is the edge node's, cut and restored
//     with it.
//
// Blocks run in the guide's order, each env keeping its state from one
// block to the next. Any other fenced block must be ```text (a picture, or
// output); the test fails on blocks it cannot run.
func TestGuide(t *testing.T) {
	src, err := os.ReadFile("../docs/guide.md")
	if err != nil {
		t.Fatal(err)
	}
	items := parseGuide(t, string(src))
	g := &guideRun{t: t, envs: make(map[string]*guideEnv)}
	g.buildPrograms(items)
	for _, it := range items {
		switch it.kind {
		case "directive":
			g.directive(it)
		case "file":
			env := g.env(it.env)
			if err := os.WriteFile(filepath.Join(env.dir, it.file), []byte(it.body), 0o600); err != nil {
				t.Fatal(err)
			}
		case "console":
			g.console(it)
		case "go", "python":
			g.program(it)
		}
	}
	if g.ran == 0 {
		t.Fatal("the guide has no examples")
	}
	t.Logf("%d examples of docs/guide.md ran", g.ran)
}

// guideItem is a runnable part of the guide.
type guideItem struct {
	line   int    // where it starts in the guide
	kind   string // console, go, python, file, directive
	env    string // local or shared
	file   string // kind file: the file's name
	body   string
	output string // go, python: the text block after it
	prog   string // go: the built program
}

var infoAttr = regexp.MustCompile(`^([a-z]+)=(\S+)$`)

// parseGuide splits the guide into its runnable items.
func parseGuide(t *testing.T, src string) []*guideItem {
	t.Helper()
	lines := strings.Split(src, "\n")
	var items []*guideItem
	var last *guideItem // the previous block, when it was a program
	for i := 0; i < len(lines); i++ {
		ln := lines[i]
		if d, ok := strings.CutPrefix(strings.TrimSpace(ln), "<!-- guide:"); ok {
			items = append(items, &guideItem{line: i + 1, kind: "directive", body: strings.TrimSpace(strings.TrimSuffix(d, "-->"))})
			continue
		}
		info, ok := strings.CutPrefix(ln, "```")
		if !ok {
			if strings.TrimSpace(ln) != "" {
				last = nil // prose between a program and a text block
			}
			continue
		}
		start := i + 1
		var body []string
		for i++; i < len(lines) && !strings.HasPrefix(lines[i], "```"); i++ {
			body = append(body, lines[i])
		}
		if i == len(lines) {
			t.Fatalf("guide.md:%d: unterminated code block", start)
		}
		fields := strings.Fields(info)
		if len(fields) == 0 {
			t.Fatalf("guide.md:%d: a code block without a language", start)
		}
		it := &guideItem{line: start, kind: fields[0], env: "local", body: strings.Join(body, "\n") + "\n"}
		for _, f := range fields[1:] {
			m := infoAttr.FindStringSubmatch(f)
			switch {
			case m != nil && m[1] == "env" && (m[2] == "local" || m[2] == "shared"):
				it.env = m[2]
			case m != nil && m[1] == "file":
				it.file = m[2]
			default:
				t.Fatalf("guide.md:%d: unknown block attribute %q (want env=local|shared or file=NAME)", start, f)
			}
		}
		switch {
		case it.file != "":
			it.kind = "file"
			items = append(items, it)
			last = nil
		case it.kind == "console" || it.kind == "go" || it.kind == "python":
			items = append(items, it)
			last = it
			if it.kind != "console" {
				continue // its output may follow
			}
		case it.kind == "text" && last != nil:
			last.output = it.body
		case it.kind == "text":
			// A picture or an illustration: nothing to run.
		default:
			t.Fatalf("guide.md:%d: a ```%s block the test cannot run (console, go, python, text, or file=NAME)", start, it.kind)
		}
		last = nil
	}
	for _, it := range items {
		if (it.kind == "go" || it.kind == "python") && it.output == "" {
			t.Fatalf("guide.md:%d: a %s example without a ```text block of its output after it", it.line, it.kind)
		}
	}
	return items
}

// guideRun is one run of the guide's examples.
type guideRun struct {
	t    *testing.T
	envs map[string]*guideEnv
	ran  int
}

// guideEnv is a directory and the sidecars serving in it.
type guideEnv struct {
	dir  string
	edge *proxy // env shared: the edge node's link to Firestore
	// start starts a sidecar serving sock as node in dir.
	start func(sock, node string, env []string, args ...string)
	// shared are the serve flags of node in env shared.
	shared func(node string) []string
}

// guideGovernors are the governors every sidecar of env shared pulls.
const guideGovernors = "orders,reports,readings"

func (g *guideRun) env(name string) *guideEnv {
	if e, ok := g.envs[name]; ok {
		return e
	}
	t := g.t
	e := &guideEnv{dir: shortTempDir(t)}
	e.start = func(sock, node string, env []string, args ...string) {
		s := &sidecar{t: t, Socket: filepath.Join(e.dir, sock), DataDir: filepath.Join(e.dir, node+"-data"), args: args, Env: env}
		s.Start()
		t.Cleanup(func() {
			s.Kill()
			if t.Failed() {
				t.Logf("%s logs:\n%s", sock, s.Logs())
			}
		})
	}
	switch name {
	case "local":
		e.start("tai.sock", "tai", nil)
	case "shared":
		emu := os.Getenv("FIRESTORE_EMULATOR_HOST")
		if emu == "" {
			t.Fatal("FIRESTORE_EMULATOR_HOST is not set: run the suite through scripts/test.sh, which starts the Firestore emulator")
		}
		root := "guide/" + rand.Text()
		e.shared = func(node string) []string {
			return []string{"--firestore-project", firestoretest.Project, "--root", root, "--node-id", node, "--governors", guideGovernors}
		}
		e.edge = newProxy(t, emu)
		e.start("a.sock", "node-a", nil, e.shared("node-a")...)
		e.start("b.sock", "node-b", nil, e.shared("node-b")...)
		e.start("edge.sock", "node-edge", []string{"FIRESTORE_EMULATOR_HOST=" + e.edge.Addr()}, e.shared("node-edge")...)
	}
	g.envs[name] = e
	return e
}

func (g *guideRun) directive(it *guideItem) {
	e := g.env("shared")
	switch f := strings.Fields(it.body); {
	case it.body == "cut edge":
		e.edge.Cut()
	case it.body == "restore edge":
		e.edge.Restore()
	case len(f) >= 2 && f[0] == "start":
		name, flags := f[1], f[2:]
		var env []string
		if len(flags) > 0 && flags[0] == "link=edge" {
			env, flags = []string{"FIRESTORE_EMULATOR_HOST=" + e.edge.Addr()}, flags[1:]
		}
		admin := filepath.Join(e.dir, name+"-admin.sock")
		args := append(e.shared("node-"+name), flags...)
		e.start(name+".sock", "node-"+name, env, append(args, "--admin-addr", "unix:"+admin)...)
		waitReadyz(g.t, admin, time.Minute)
	default:
		g.t.Fatalf("guide.md:%d: unknown directive %q (want cut edge, restore edge or start NAME [link=edge] [FLAG...])", it.line, it.body)
	}
}

// waitReadyz waits until the admin endpoint on the Unix socket admin
// answers /readyz with 200.
func waitReadyz(t *testing.T, admin string, timeout time.Duration) {
	t.Helper()
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", admin)
		}}}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	for {
		resp, err := hc.Get("http://admin/readyz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("%s: %s", resp.Status, body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not ready after %v: %v", admin, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// environ is the environment of the examples: the test's, with the built
// tai-sidecar first on PATH and no TAI_* settings.
func (g *guideRun) environ() []string { return guideEnviron() }

// guideEnviron is the environment the guide's commands run in.
func guideEnviron() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "TAI_") || strings.HasPrefix(kv, "PATH=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "PATH="+filepath.Dir(sidecarBin)+string(os.PathListSeparator)+os.Getenv("PATH"), "PYTHONDONTWRITEBYTECODE=1")
}

// console runs a shell session and checks each command's output.
func (g *guideRun) console(it *guideItem) {
	t := g.t
	type step struct {
		cmd  string
		want []string
		line int
	}
	var steps []*step
	var cur *step
	lines := strings.Split(strings.TrimSuffix(it.body, "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		if c, ok := strings.CutPrefix(lines[i], "$ "); ok {
			cur = &step{cmd: c, line: it.line + i + 1}
			for strings.HasSuffix(lines[i], "\\") && i+1 < len(lines) {
				i++
				cur.cmd += "\n" + lines[i]
			}
			steps = append(steps, cur)
			continue
		}
		if cur == nil {
			t.Fatalf("guide.md:%d: a console block must start with a command (\"$ ...\")", it.line)
		}
		cur.want = append(cur.want, lines[i])
	}
	var script strings.Builder
	script.WriteString("exec 2>&1\n")
	for i, s := range steps {
		fmt.Fprintf(&script, "printf '\\0guide-step-%d\\0'\n%s\n", i, s.cmd)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script.String())
	cmd.Dir, cmd.Env = g.env(it.env).dir, g.environ()
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("guide.md:%d: the session did not end within a minute: %v\n%s", it.line, err, out)
	}
	rest := string(out)
	for i, s := range steps {
		_, after, ok := strings.Cut(rest, guideMark(i))
		if !ok {
			t.Fatalf("guide.md:%d: no output of %q at all:\n%s", s.line, s.cmd, out)
		}
		got := after
		if i+1 < len(steps) {
			got, _, _ = strings.Cut(after, guideMark(i+1))
		}
		rest = after
		want := strings.Join(s.want, "\n")
		if !outputMatches(want, got) {
			t.Errorf("guide.md:%d: $ %s\nprinted:\n%s\nthe guide shows:\n%s", s.line, s.cmd, got, want)
		}
	}
	g.ran++
}

func guideMark(i int) string { return fmt.Sprintf("\x00guide-step-%d\x00", i) }

// buildPrograms builds every Go example as a program of a module that uses
// this repository (a replace directive), in one go build.
func (g *guideRun) buildPrograms(items []*guideItem) {
	t := g.t
	mod := t.TempDir()
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	gomod := fmt.Sprintf("module guideexamples\n\ngo 1.26\n\nrequire github.com/tai-state/tai-state v0.0.0\n\nreplace github.com/tai-state/tai-state => %s\n", repo)
	sum, err := os.ReadFile(filepath.Join(repo, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, it := range items {
		if it.kind != "go" {
			continue
		}
		n++
		dir := filepath.Join(mod, fmt.Sprintf("line%d", it.line))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(it.body), 0o600); err != nil {
			t.Fatal(err)
		}
		it.prog = filepath.Join(mod, "bin", filepath.Base(dir))
	}
	if n == 0 {
		return
	}
	for name, body := range map[string][]byte{"go.mod": []byte(gomod), "go.sum": sum} {
		if err := os.WriteFile(filepath.Join(mod, name), body, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "build", "-o", filepath.Join(mod, "bin")+"/", "./...")
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the guide's Go examples do not build (dirs are named after the line each starts at): %v\n%s", err, out)
	}
}

// program runs a Go or Python example and checks its output.
func (g *guideRun) program(it *guideItem) {
	t := g.t
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var cmd *exec.Cmd
	env := g.environ()
	if it.kind == "go" {
		cmd = exec.CommandContext(ctx, it.prog)
	} else {
		script := filepath.Join(t.TempDir(), "example.py")
		if err := os.WriteFile(script, []byte(it.body), 0o600); err != nil {
			t.Fatal(err)
		}
		lib, err := filepath.Abs("../examples/python")
		if err != nil {
			t.Fatal(err)
		}
		cmd = exec.CommandContext(ctx, debianPython, script)
		env = append(env, "PYTHONPATH="+lib)
	}
	cmd.Dir, cmd.Env = g.env(it.env).dir, env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Errorf("guide.md:%d: the %s example failed: %v\n%s", it.line, it.kind, err, out.String())
		return
	}
	if want := strings.TrimSuffix(it.output, "\n"); !outputMatches(want, out.String()) {
		t.Errorf("guide.md:%d: the %s example printed:\n%s\nthe guide shows:\n%s", it.line, it.kind, out.String(), want)
	}
	g.ran++
}

// The placeholders of shown output.
var placeholders = strings.NewReplacer(
	"<\\.\\.\\.>", `.*?`,
	"<N>", `-?[0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?`,
	"<TIME>", `[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z`,
	"<ID>", `[A-Za-z0-9._~-]+`,
)

// outputMatches says whether got is the output want shows, placeholders
// and all; a final newline does not count.
func outputMatches(want, got string) bool {
	var re strings.Builder
	re.WriteString(`\A`)
	sc := bufio.NewScanner(strings.NewReader(want))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if ln := sc.Text(); ln == "..." {
			re.WriteString(`(?:[^\n]*\n)*?`)
		} else {
			re.WriteString(placeholders.Replace(regexp.QuoteMeta(ln)) + `\n`)
		}
	}
	re.WriteString(`\z`)
	got = strings.TrimSuffix(got, "\n") + "\n"
	if want == "" {
		return got == "\n"
	}
	return regexp.MustCompile(re.String()).MatchString(got)
}

// TestGuideNamesRealFlagsAndCommands: every --flag the guide names is a
// flag of serve or of a CLI command, every tai-sidecar WORD in a command
// line (a session, inline code or an indented block) names a command, as
// the binary's help says, and every serve command line the guide shows (in
// an indented block) is a valid configuration.
func TestGuideNamesRealFlagsAndCommands(t *testing.T) {
	src, err := os.ReadFile("../docs/guide.md")
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		cmd := exec.Command(sidecarBin, args...)
		cmd.Env = guideEnviron()
		out, _ := cmd.CombinedOutput() // -h exits with status 2
		return string(out)
	}
	help := run("help")
	known := help
	for _, args := range [][]string{{"serve"}, {"config", "print"}, {"status"}, {"lock", "acquire"}, {"get"}, {"put"},
		{"delete"}, {"list"}, {"watch"}, {"pending"}, {"failed"}, {"flush"}, {"events"}, {"state-at"}, {"validate"},
		{"snapshot"}, {"transition"}, {"cleanup"}, {"replay"}, {"conflicts"}, {"history", "export"}, {"resolver"}} {
		usage := run(append(args, "-h")...)
		if !strings.Contains(usage, "-") {
			t.Fatalf("%v -h printed no flags: %q", args, usage)
		}
		known += usage
	}
	for _, m := range regexp.MustCompile(`(?:^|[^-\w])--([a-z][a-z0-9-]*)`).FindAllStringSubmatch(string(src), -1) {
		if !regexp.MustCompile(`(?m)(^|\s|\[)--?` + regexp.QuoteMeta(m[1]) + `(\s|=|$)`).MatchString(known) {
			t.Errorf("the guide names --%s, which no command has", m[1])
		}
	}
	// Command lines of serve shown but not run are valid configurations.
	serves := regexp.MustCompile(`(?m)^    tai-sidecar serve ((?:.*\\\n)*.*)$`).FindAllStringSubmatch(string(src), -1)
	if len(serves) == 0 {
		t.Error("the guide shows no serve command line")
	}
	for _, m := range serves {
		args := strings.Fields(strings.ReplaceAll(m[1], "\\\n", " "))
		if out := run(append([]string{"config", "print"}, args...)...); !strings.Contains(out, "# Effective configuration") {
			t.Errorf("tai-sidecar serve %s: not a valid configuration:\n%s", strings.Join(args, " "), out)
		}
	}

	commands := regexp.MustCompile(`(?m)^  ([a-z][a-z-]*)\b`).FindAllStringSubmatch(help, -1)
	isCommand := map[string]bool{"serve": true, "help": true, "version": true}
	for _, c := range commands {
		isCommand[c[1]] = true
	}
	for _, m := range regexp.MustCompile("(?:[$] |`|\n    )tai-sidecar(?: --socket \\S+)? ([a-z][a-z-]*)").FindAllStringSubmatch(string(src), -1) {
		if !isCommand[m[1]] {
			t.Errorf("the guide names the command %q, which tai-sidecar does not have", m[1])
		}
	}
}

// TestGuideOutputMatching: the placeholders of shown output match what
// they stand for, and nothing else.
func TestGuideOutputMatching(t *testing.T) {
	for _, tc := range []struct {
		want, got string
		ok        bool
	}{
		{"a\nb", "a\nb\n", true},
		{"a\nb", "a\nb", true},
		{"a\nb", "a\nc\n", false},
		{"a", "a\nb\n", false},
		{"", "", true},
		{"", "x\n", false},
		{"a\n...\nd", "a\nb\nc\nd\n", true},
		{"a\n...\nd", "a\nd\n", true},
		{"a\n...\nd", "a\nb\n", false},
		{`{"v":<N>,"t":"<TIME>"}`, `{"v":12.5,"t":"2026-01-02T03:04:05.678Z"}`, true},
		{`{"v":<N>}`, `{"v":"x"}`, false},
		{`holder <ID> token 1`, `holder node-a.x3u.5 token 1`, true},
		{`holder <ID> token 1`, `holder node a token 1`, false},
		{`{"a":1,<...>,"z":2}`, `{"a":1,"b":[3],"z":2}`, true},
		{`{"a":1,<...>,"z":2}`, `{"a":1,"z":3}`, false},
		{`x.y`, `xzy`, false},
	} {
		if got := outputMatches(tc.want, tc.got); got != tc.ok {
			t.Errorf("outputMatches(%q, %q) = %v, want %v", tc.want, tc.got, got, tc.ok)
		}
	}
}
