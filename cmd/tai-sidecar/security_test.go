package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/sockapi"
)

func TestSecurityFlags(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.json", `{
		"allow_uids": [1000],
		"governors": {"orders": {"read": [1000, 1001], "write": [1000]}},
		"default": {"read": [1001]},
		"admin": []
	}`)
	unknownKey := write("unknown.json", `{"allow_uid": [1000]}`)
	badGovernor := write("badgov.json", `{"governors": {"a/b": {}}}`)
	notJSON := write("bad.json", `allow_uids: [1]`)
	twoValues := write("two.json", `{} {}`)
	big := write("big.json", `{"allow_uids": [`+strings.Repeat("1,", maxAccessFile/2)+`1]}`)

	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(SecurityConfig) bool
		wantErr string
	}{
		{
			name: "defaults",
			check: func(c SecurityConfig) bool {
				return c.MaxConns == 1024 && c.MaxConnsPerUID == 256 && c.MaxInflight == 128 &&
					c.IdleTimeout == 5*time.Minute && c.AccessFile == "" && !restricted(c.Access)
			},
		},
		{
			name: "flags",
			args: []string{"--max-conns", "50", "--max-conns-per-uid", "10", "--max-inflight", "4", "--idle-timeout", "30s",
				"--allow-uid", "1000,1001", "--allow-uid", "1002", "--allow-gid", "50"},
			check: func(c SecurityConfig) bool {
				return c.MaxConns == 50 && c.MaxConnsPerUID == 10 && c.MaxInflight == 4 && c.IdleTimeout == 30*time.Second &&
					slices.Equal(c.Access.AllowUIDs, []uint32{1000, 1001, 1002}) && slices.Equal(c.Access.AllowGIDs, []uint32{50})
			},
		},
		{
			name: "environment",
			env: map[string]string{"TAI_MAX_CONNS": "60", "TAI_MAX_CONNS_PER_UID": "6", "TAI_MAX_INFLIGHT": "8",
				"TAI_IDLE_TIMEOUT": "1m", "TAI_ALLOW_UIDS": "1, 2", "TAI_ALLOW_GIDS": "3"},
			check: func(c SecurityConfig) bool {
				return c.MaxConns == 60 && c.MaxConnsPerUID == 6 && c.MaxInflight == 8 && c.IdleTimeout == time.Minute &&
					slices.Equal(c.Access.AllowUIDs, []uint32{1, 2}) && slices.Equal(c.Access.AllowGIDs, []uint32{3})
			},
		},
		{
			name: "flags win over environment",
			args: []string{"--allow-uid", "7", "--max-conns", "9"},
			env:  map[string]string{"TAI_ALLOW_UIDS": "1,2", "TAI_MAX_CONNS": "60"},
			check: func(c SecurityConfig) bool {
				return c.MaxConns == 9 && slices.Equal(c.Access.AllowUIDs, []uint32{7})
			},
		},
		{
			name:  "default per-uid cap follows a lower max-conns",
			args:  []string{"--max-conns", "100"},
			check: func(c SecurityConfig) bool { return c.MaxConnsPerUID == 100 },
		},
		{
			name: "access file, allowlist flags added",
			args: []string{"--access-file", good, "--allow-uid", "1000,2000"},
			check: func(c SecurityConfig) bool {
				a := c.Access
				return c.AccessFile == good && slices.Equal(a.AllowUIDs, []uint32{1000, 2000}) &&
					slices.Equal(a.Governors["orders"].Write, []uint32{1000}) &&
					a.Default != nil && slices.Equal(a.Default.Read, []uint32{1001}) && a.Default.Write == nil &&
					a.Admin != nil && len(a.Admin) == 0
			},
		},
		{
			name:  "access file from the environment",
			env:   map[string]string{"TAI_ACCESS_FILE": good},
			check: func(c SecurityConfig) bool { return c.AccessFile == good && len(c.Access.Governors) == 1 },
		},
		{name: "max-conns not a number", args: []string{"--max-conns", "lots"}, wantErr: `--max-conns "lots": not an integer`},
		{name: "max-conns zero", args: []string{"--max-conns", "0"}, wantErr: "--max-conns \"0\": out of range"},
		{name: "max-conns env", env: map[string]string{"TAI_MAX_CONNS": "-1"}, wantErr: "TAI_MAX_CONNS"},
		{name: "per-uid above max-conns", args: []string{"--max-conns", "10", "--max-conns-per-uid", "11"}, wantErr: "above --max-conns 10"},
		{name: "per-uid zero", args: []string{"--max-conns-per-uid", "0"}, wantErr: "max-conns-per-uid"},
		{name: "max-inflight too big", args: []string{"--max-inflight", "100000"}, wantErr: "max-inflight"},
		{name: "idle-timeout not a duration", args: []string{"--idle-timeout", "5"}, wantErr: "not a duration"},
		{name: "idle-timeout zero", args: []string{"--idle-timeout", "0s"}, wantErr: "--idle-timeout \"0s\": out of range"},
		{name: "idle-timeout too long", args: []string{"--idle-timeout", "48h"}, wantErr: "idle-timeout"},
		{name: "uid not a number", args: []string{"--allow-uid", "root"}, wantErr: `--allow-uid: "root" is not a numeric uid`},
		{name: "uid negative", args: []string{"--allow-uid", "-1"}, wantErr: "--allow-uid"},
		{name: "uid -1 as unsigned", args: []string{"--allow-uid", "4294967295"}, wantErr: "--allow-uid"},
		{name: "empty uid in list", args: []string{"--allow-uid", "1,,2"}, wantErr: "--allow-uid"},
		{name: "gid env bad", env: map[string]string{"TAI_ALLOW_GIDS": "x"}, wantErr: "TAI_ALLOW_GIDS"},
		{name: "access file missing", args: []string{"--access-file", filepath.Join(dir, "nope.json")}, wantErr: "--access-file"},
		{name: "access file unknown key", args: []string{"--access-file", unknownKey}, wantErr: "unknown field"},
		{name: "access file bad governor", args: []string{"--access-file", badGovernor}, wantErr: "contains '/'"},
		{name: "access file not JSON", args: []string{"--access-file", notJSON}, wantErr: "not a valid access policy"},
		{name: "access file two values", args: []string{"--access-file", twoValues}, wantErr: "more than one JSON value"},
		{name: "access file too large", args: []string{"--access-file", big}, wantErr: "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseServe(tt.args, "./tai.sock", io.Discard, envMap(tt.env))
			if tt.wantErr != "" {
				var ue *usageError
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.As(err, &ue) {
					t.Fatalf("err = %v, want a usage error containing %q", err, tt.wantErr)
				}
				if exitCode(err) != 2 {
					t.Fatalf("exit code %d, want 2", exitCode(err))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c.Security) {
				t.Fatalf("unexpected config: %+v", c.Security)
			}
		})
	}
}

func TestSecurityServerOptions(t *testing.T) {
	c, err := parseServe([]string{"--max-conns", "7", "--max-conns-per-uid", "3", "--max-inflight", "2", "--idle-timeout", "9s", "--allow-gid", "5"},
		"./tai.sock", io.Discard, envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	o := c.Security.serverOptions(sockapi.Options{ServerName: "x", MaxFrame: 1 << 20})
	if o.ServerName != "x" || o.MaxFrame != 1<<20 || o.MaxConns != 7 || o.MaxConnsPerUID != 3 || o.MaxInflight != 2 ||
		o.IdleTimeout != 9*time.Second || !slices.Equal(o.Access.AllowGIDs, []uint32{5}) {
		t.Fatalf("options %+v", o)
	}
}

func restricted(a sockapi.Access) bool {
	return len(a.AllowUIDs) > 0 || len(a.AllowGIDs) > 0 || a.Governors != nil || a.Default != nil || a.Admin != nil
}
