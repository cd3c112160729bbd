package packaging

import (
	"bufio"
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/tai-state/tai-state/packaging/internal/testbin"
)

// instruction is one Dockerfile instruction: its upper-cased command, its
// arguments as written, and, for the exec (JSON) form, the parsed list.
type instruction struct {
	cmd  string
	args string
	exec []string
	line int
}

type stage struct {
	from, name string
	insts      []instruction
}

// parseDockerfile splits a Dockerfile into stages of instructions. It
// handles comments, backslash continuations and the JSON exec form.
func parseDockerfile(data []byte) (global []instruction, stages []stage, err error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	var cont strings.Builder
	lineNo, start := 0, 0
	for sc.Scan() {
		lineNo++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cont.Len() == 0) {
			continue
		}
		if cont.Len() == 0 {
			start = lineNo
		}
		if strings.HasSuffix(trimmed, `\`) {
			cont.WriteString(strings.TrimSpace(strings.TrimSuffix(trimmed, `\`)) + " ")
			continue
		}
		cont.WriteString(trimmed)
		full := cont.String()
		cont.Reset()
		cmd, args, _ := strings.Cut(full, " ")
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		if strings.HasPrefix(in.args, "[") {
			if err := json.Unmarshal([]byte(in.args), &in.exec); err != nil {
				return nil, nil, fmt.Errorf("line %d: %s: bad exec form: %v", start, in.cmd, err)
			}
		}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			st := stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			} else if len(f) != 1 {
				return nil, nil, fmt.Errorf("line %d: bad FROM %q", start, in.args)
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) == 0 {
			global = append(global, in)
		} else {
			stages[len(stages)-1].insts = append(stages[len(stages)-1].insts, in)
		}
	}
	if cont.Len() > 0 {
		return nil, nil, fmt.Errorf("file ends in a continued line")
	}
	return global, stages, sc.Err()
}

func (s stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.insts {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// shellWords splits a shell command line into words, honouring single and
// double quotes (enough for the Dockerfile's RUN lines).
func shellWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				w.WriteRune(r)
			}
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated quote in %q", s)
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

func loadDockerfile(t *testing.T) ([]instruction, []stage) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("container", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	global, stages, err := parseDockerfile(data)
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stages, want a builder and a final stage", len(stages))
	}
	return global, stages
}

func TestDockerfileParser(t *testing.T) {
	g, st, err := parseDockerfile([]byte("ARG X=1\n# c\nFROM a AS b\nRUN x \\\n  y\nFROM c\nENTRYPOINT [\"/p\", \"q\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(g) != 1 || len(st) != 2 || st[0].name != "b" || st[0].insts[0].args != "x y" ||
		!slices.Equal(st[1].insts[0].exec, []string{"/p", "q"}) {
		t.Errorf("parsed %+v %+v", g, st)
	}
	for _, bad := range []string{"FROM a b\n", "FROM a\nCMD [\"x\"\n", "FROM a\nRUN x \\\n"} {
		if _, _, err := parseDockerfile([]byte(bad)); err == nil {
			t.Errorf("parseDockerfile(%q) succeeded", bad)
		}
	}
	w, err := shellWords(`A=0 go build -ldflags "-s -w" 'x y' z`)
	if err != nil || !slices.Equal(w, []string{"A=0", "go", "build", "-ldflags", "-s -w", "x y", "z"}) {
		t.Errorf("shellWords = %q, %v", w, err)
	}
}

// TestDockerfileBuilder: the builder compiles a static binary with the same
// flags as the one the tests build, from the Go release in go.mod.
func TestDockerfileBuilder(t *testing.T) {
	global, stages := loadDockerfile(t)
	build := stages[0]
	if build.name == "" || !strings.HasPrefix(build.from, "golang:") {
		t.Errorf("first stage FROM %s AS %q, want a named golang stage", build.from, build.name)
	}
	var goVersion string
	for _, in := range global {
		if v, ok := strings.CutPrefix(in.args, "GO_VERSION="); in.cmd == "ARG" && ok {
			goVersion = v
		}
	}
	dir, err := testbin.MainModuleDir()
	if err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	var want string
	for _, l := range strings.Split(string(gomod), "\n") {
		if v, ok := strings.CutPrefix(l, "go "); ok {
			want = strings.TrimSpace(v)
		}
	}
	if goVersion == "" || !strings.HasPrefix(want+".", goVersion+".") {
		t.Errorf("ARG GO_VERSION=%q does not match go.mod's go %s", goVersion, want)
	}

	var found bool
	for _, in := range build.all("RUN") {
		words, err := shellWords(in.args)
		if err != nil {
			t.Fatalf("line %d: %v", in.line, err)
		}
		i := slices.Index(words, "go")
		if i < 0 || i+1 >= len(words) || words[i+1] != "build" {
			continue
		}
		found = true
		if !slices.Contains(words[:i], "CGO_ENABLED=0") {
			t.Errorf("line %d: go build without CGO_ENABLED=0: %q", in.line, in.args)
		}
		args := words[i+2:]
		if !slices.Contains(args, "-trimpath") {
			t.Errorf("line %d: go build without -trimpath", in.line)
		}
		j := slices.Index(args, "-ldflags")
		if j < 0 || j+1 >= len(args) {
			t.Errorf("line %d: go build without -ldflags", in.line)
		} else if ld := strings.Fields(args[j+1]); !slices.Contains(ld, "-s") || !slices.Contains(ld, "-w") {
			t.Errorf("line %d: -ldflags %q lacks -s -w", in.line, args[j+1])
		}
		if args[len(args)-1] != "./cmd/tai-sidecar" {
			t.Errorf("line %d: builds %q, want ./cmd/tai-sidecar", in.line, args[len(args)-1])
		}
	}
	if !found {
		t.Error("the builder stage has no RUN ... go build")
	}
}

// TestDockerfileFinal: the image is distroless or scratch, runs as a
// numeric non-root user, has no shell to run anything with, and its
// entrypoint serves on a socket in a volume with flags the binary has.
func TestDockerfileFinal(t *testing.T) {
	_, stages := loadDockerfile(t)
	final := stages[len(stages)-1]
	if !(final.from == "scratch" || strings.HasPrefix(final.from, "gcr.io/distroless/static") && strings.HasSuffix(final.from, ":nonroot")) {
		t.Errorf("final stage FROM %s, want distroless static:nonroot or scratch", final.from)
	}
	for _, cmd := range []string{"RUN", "SHELL", "ADD"} {
		if ins := final.all(cmd); len(ins) > 0 {
			t.Errorf("final stage has %s (line %d): it has no shell and takes only built files", cmd, ins[0].line)
		}
	}
	names := map[string]bool{}
	for _, s := range stages[:len(stages)-1] {
		names[s.name] = true
	}
	for _, in := range final.all("COPY") {
		from := ""
		for _, w := range strings.Fields(in.args) {
			if v, ok := strings.CutPrefix(w, "--from="); ok {
				from = v
			}
		}
		if !names[from] {
			t.Errorf("line %d: COPY %s does not copy from a builder stage", in.line, in.args)
		}
	}

	users := final.all("USER")
	if len(users) != 1 {
		t.Fatalf("final stage has %d USER instructions, want 1", len(users))
	}
	uid, gid, _ := strings.Cut(users[0].args, ":")
	for _, id := range []string{uid, gid} {
		if n, err := strconv.Atoi(id); err != nil || n <= 0 {
			t.Errorf("USER %s: want numeric non-root uid:gid", users[0].args)
		}
	}

	var volumes []string
	for _, in := range final.all("VOLUME") {
		if in.exec == nil {
			t.Errorf("line %d: VOLUME %s: use the JSON form", in.line, in.args)
		}
		volumes = append(volumes, in.exec...)
	}
	if cmds := final.all("CMD"); len(cmds) > 0 {
		t.Errorf("final stage has CMD (line %d); arguments go in ENTRYPOINT", cmds[0].line)
	}
	eps := final.all("ENTRYPOINT")
	if len(eps) != 1 || eps[0].exec == nil {
		t.Fatalf("final stage needs one ENTRYPOINT in exec form, got %+v", eps)
	}
	ep := eps[0].exec
	if len(ep) < 2 || ep[0] != "/tai-sidecar" || ep[1] != "serve" {
		t.Fatalf("ENTRYPOINT %q, want /tai-sidecar serve ...", ep)
	}
	vals := checkServeArgs(t, ep[2:])
	if !slices.Contains(volumes, filepath.Dir(vals["socket"])) {
		t.Errorf("--socket %q: its directory is not a VOLUME (%q)", vals["socket"], volumes)
	}
	if !slices.Contains(volumes, vals["data-dir"]) {
		t.Errorf("--data-dir %q is not a VOLUME (%q)", vals["data-dir"], volumes)
	}
}

// TestStaticBinary: a binary built as the Dockerfile builds it runs on
// distroless/static or scratch: no interpreter, no dynamic section.
func TestStaticBinary(t *testing.T) {
	f, err := elf.Open(sidecar)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("program header %s: the binary is dynamically linked", p.Type)
		}
	}
	if s := f.Section(".dynamic"); s != nil {
		t.Error("the binary has a .dynamic section")
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs %q", libs)
	}
	if f.Section(".symtab") != nil {
		t.Error("the binary has a symbol table: -ldflags -s missing")
	}

	bi, err := buildinfo.ReadFile(sidecar)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		t.Errorf("build settings %v: want CGO_ENABLED=0 and -trimpath", settings)
	}
}
