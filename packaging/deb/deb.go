// Package deb builds tai-sidecar's Debian package with nfpm.
//
// The package holds /usr/bin/tai-sidecar, the systemd unit in
// /usr/lib/systemd/system/, /etc/default/tai-sidecar as a conffile, and the
// maintainer scripts in this directory (postinst, prerm, postrm): POSIX sh,
// safe to run again, and working without a running systemd and under
// DPKG_ROOT.
package deb

import (
	"debug/elf"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	debpkg "github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"

	"github.com/tai-state/tai-state/packaging"
)

// Name is the package's name.
const Name = "tai-sidecar"

// Paths of the installed files.
const (
	BinaryPath  = "/usr/bin/tai-sidecar"
	UnitPath    = "/usr/lib/systemd/system/tai-sidecar.service"
	EnvFilePath = "/etc/default/tai-sidecar"
)

// DefaultMaintainer is the Maintainer field unless Options says otherwise.
const DefaultMaintainer = "tai-state maintainers <maintainers@tai-state.invalid>"

//go:embed postinst
var postinst []byte

//go:embed prerm
var prerm []byte

//go:embed postrm
var postrm []byte

// Errors of Build and FileName.
var (
	ErrVersion = errors.New("deb: bad version")
	ErrArch    = errors.New("deb: unsupported architecture")
	ErrBinary  = errors.New("deb: bad binary")
)

// Options says what to package.
type Options struct {
	Binary     string    // path of a tai-sidecar built for Arch (required)
	Version    string    // e.g. 1.2.3 or v1.2.3-rc.1 (required)
	Arch       string    // GOARCH of Binary: amd64, arm64, arm (GOARM=7), 386, ppc64le, s390x, riscv64
	Maintainer string    // default DefaultMaintainer
	MTime      time.Time // time of every file; default SOURCE_DATE_EPOCH, else now
}

// goarch maps GOARCH to the Debian architecture and the ELF machine.
var goarch = map[string]struct {
	deb     string
	machine elf.Machine
}{
	"amd64":   {"amd64", elf.EM_X86_64},
	"arm64":   {"arm64", elf.EM_AARCH64},
	"arm":     {"armhf", elf.EM_ARM},
	"386":     {"i386", elf.EM_386},
	"ppc64le": {"ppc64el", elf.EM_PPC64},
	"s390x":   {"s390x", elf.EM_S390},
	"riscv64": {"riscv64", elf.EM_RISCV},
}

// DebArch returns the Debian architecture for a GOARCH.
func DebArch(arch string) (string, error) {
	a, ok := goarch[arch]
	if !ok {
		return "", fmt.Errorf("%w %q (want one of amd64, arm64, arm, 386, ppc64le, s390x, riscv64)", ErrArch, arch)
	}
	return a.deb, nil
}

// versionRE is an upstream version that dpkg accepts without an epoch.
var versionRE = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~-]*$`)

func (o *Options) info() (*nfpm.Info, error) {
	version := strings.TrimPrefix(o.Version, "v")
	if !versionRE.MatchString(version) {
		return nil, fmt.Errorf("%w %q: want a digit first, then letters, digits and . + ~ -", ErrVersion, o.Version)
	}
	arch, err := DebArch(o.Arch)
	if err != nil {
		return nil, err
	}
	maintainer := o.Maintainer
	if maintainer == "" {
		maintainer = DefaultMaintainer
	}
	info := &nfpm.Info{
		Name:       Name,
		Arch:       arch,
		Platform:   "linux",
		Version:    version,
		Section:    "database",
		Priority:   "optional",
		Maintainer: maintainer,
		Homepage:   "https://github.com/tai-state/tai-state",
		Description: "durable, versioned state for apps in any language\n" +
			"tai-sidecar keeps state for local apps in an embedded store with a\n" +
			"write-ahead log and serves it on a Unix socket (/run/tai/tai.sock).",
		MTime: o.MTime,
	}
	info.Deb.Arch = arch
	return nfpm.WithDefaults(info), nil
}

// FileName returns the conventional name of the package for o:
// tai-sidecar_VERSION_ARCH.deb.
func FileName(o Options) (string, error) {
	info, err := o.info()
	if err != nil {
		return "", err
	}
	return debpkg.Default.ConventionalFileName(info), nil
}

// Build writes the package for o to w.
func Build(w io.Writer, o Options) error {
	info, err := o.info()
	if err != nil {
		return err
	}
	if err := checkBinary(o.Binary, goarch[o.Arch].machine); err != nil {
		return err
	}

	// nfpm reads every file from disk: write out the embedded ones.
	tmp, err := os.MkdirTemp("", "mkdeb-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	write := func(name string, data []byte, mode os.FileMode) (string, error) {
		p := filepath.Join(tmp, name)
		return p, os.WriteFile(p, data, mode)
	}
	var paths [5]string
	for i, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"tai-sidecar.service", packaging.SystemdUnit(), 0o644},
		{"tai-sidecar.default", packaging.EnvFile(), 0o644},
		{"postinst", postinst, 0o755},
		{"prerm", prerm, 0o755},
		{"postrm", postrm, 0o755},
	} {
		if paths[i], err = write(f.name, f.data, f.mode); err != nil {
			return err
		}
	}

	root := func(mode os.FileMode) *files.ContentFileInfo {
		return &files.ContentFileInfo{Owner: "root", Group: "root", Mode: mode}
	}
	info.Contents = files.Contents{
		{Source: o.Binary, Destination: BinaryPath, FileInfo: root(0o755)},
		{Source: paths[0], Destination: UnitPath, FileInfo: root(0o644)},
		{Source: paths[1], Destination: EnvFilePath, Type: files.TypeConfig, FileInfo: root(0o644)},
	}
	info.Scripts = nfpm.Scripts{PostInstall: paths[2], PreRemove: paths[3], PostRemove: paths[4]}
	if err := debpkg.Default.Package(info, w); err != nil {
		return fmt.Errorf("deb: %w", err)
	}
	return nil
}

// checkBinary makes sure path is an executable ELF file for machine: a
// package for one architecture must not carry a binary for another.
func checkBinary(path string, machine elf.Machine) error {
	if path == "" {
		return fmt.Errorf("%w: no binary given", ErrBinary)
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%w %s: %v", ErrBinary, path, err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("%w %s: ELF type %s, want an executable", ErrBinary, path, f.Type)
	}
	if f.Machine != machine {
		return fmt.Errorf("%w %s: built for %s, want %s", ErrBinary, path, f.Machine, machine)
	}
	return nil
}
