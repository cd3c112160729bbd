package main

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// TestCrossSettingErrorsNameEachSource: an error about a rule between
// settings names where each setting involved was given: FILE:LINE for a
// file value, the variable for an environment value, the flag for a flag,
// "(default)" for a default.
func TestCrossSettingErrorsNameEachSource(t *testing.T) {
	file := writeConfig(t, "# limits\nmax_conns: 10\nmax_frame: 65536\nmax_conns_per_uid: 20\nadmin_allow_remote: false\n")
	only := func(body string) string { return writeConfig(t, body) }
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string // FILE is the config file's path
	}{
		{name: "file and file", args: []string{"--config", file},
			want: `FILE:4: max_conns_per_uid "20": above max_conns 10 (FILE:2)`},
		{name: "env over file", args: []string{"--config", file}, env: map[string]string{"TAI_MAX_CONNS_PER_UID": "30"},
			want: `TAI_MAX_CONNS_PER_UID "30": above max_conns 10 (FILE:2)`},
		{name: "flag and env", args: []string{"--max-conns-per-uid", "9"}, env: map[string]string{"TAI_MAX_CONNS": "8"},
			want: `--max-conns-per-uid "9": above TAI_MAX_CONNS=8`},
		{name: "file and flag", args: []string{"--config", file, "--max-conns", "5", "--max-conns-per-uid", "6"},
			want: `--max-conns-per-uid "6": above --max-conns 5`},
		{name: "env and default", env: map[string]string{"TAI_MAX_CONNS_PER_UID": "2000"},
			want: `TAI_MAX_CONNS_PER_UID "2000": above --max-conns 1024 (default)`},
		{name: "value above the frame of a file", args: []string{"--config", file, "--max-conns-per-uid", "1", "--max-value", "60000"},
			want: `--max-value "60000": above 57344, the largest value max_frame 65536 (FILE:3) carries`},
		{name: "value in a file above the frame of env", args: []string{"--config", only("\n\nmax_value: 100000\n")},
			env:  map[string]string{"TAI_MAX_FRAME": "65536"},
			want: `FILE:3: max_value "100000": above 57344, the largest value TAI_MAX_FRAME=65536 carries`},
		{name: "remote admin address, allow-remote in the file", args: []string{"--config", file, "--max-conns-per-uid", "1"},
			env:  map[string]string{"TAI_ADMIN_ADDR": "0.0.0.0:9464"},
			want: `TAI_ADMIN_ADDR "0.0.0.0:9464": not a loopback address and admin_allow_remote false (FILE:5): the endpoint has no authentication`},
		{name: "remote admin address in a file", args: []string{"--config", only("admin_addr: 10.0.0.1:9464\n")},
			want: `FILE:1: admin_addr "10.0.0.1:9464": not a loopback address and --admin-allow-remote false (default)`},
		{name: "bad admin address in a file", args: []string{"--config", only("\nadmin_addr: nowhere\n")},
			want: `FILE:2: admin_addr "nowhere": want host:port or unix:PATH`},
		{name: "root in a file without a project", args: []string{"--config", only("log_level: info\nroot: deployments/prod\n")},
			want: `FILE:2: root "deployments/prod": needs --firestore-project`},
		{name: "governors from env without a project", env: map[string]string{"TAI_GOVERNORS": "orders"},
			want: `TAI_GOVERNORS: needs --firestore-project`},
		{name: "database flag without a project", args: []string{"--firestore-database", "db"},
			want: `--firestore-database "db": needs --firestore-project`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseServe(tc.args, "", io.Discard, envMap(tc.env))
			var ue *usageError
			if err == nil || !errors.As(err, &ue) {
				t.Fatalf("error %v, want a usage error", err)
			}
			path := file
			for i, a := range tc.args {
				if a == "--config" {
					path = tc.args[i+1]
				}
			}
			if want := "serve: " + strings.ReplaceAll(tc.want, "FILE", path); !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("error\n  %v\nwant it to start with\n  %s", err, want)
			}
		})
	}

	// With every setting of the shared store given, nothing is refused.
	if _, err := parseServe([]string{"--firestore-project", "p", "--root", "a/b", "--governors", "orders"}, "", io.Discard, envMap(nil)); err != nil {
		t.Fatal(err)
	}
}
