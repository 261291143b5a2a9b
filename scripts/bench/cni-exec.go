// cni-exec: run CNI plugin calls the way container runtimes do and time each one.
//
// containerd, CRI-O, podman and the kubelet reach plugins through libcni, whose
// invoke.RawExec runs the plugin with os/exec: the network config on stdin, stdout and
// stderr captured, the CNI_* variables appended to the caller's environment. This does
// the same, so a timing is the plugin's latency as a runtime sees it (process start,
// work, exit), without a shell's fork of itself in between.
//
// Usage: cni-exec PLAN
// Each PLAN line: LABEL PLUGIN CONFIG COMMAND CONTAINERID NETNS IFNAME CNIPATH
// (NETNS "-" for none). Calls run in order; each prints "LABEL MICROSECONDS".
// A failing call prints the plugin's output on stderr and exits 1.
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: cni-exec PLAN")
		os.Exit(2)
	}
	plan, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	// CNI_EXEC_SETTLE: a pause (Go duration) before each call, spent spinning
	// (CNI_EXEC_SPIN=1) or sleeping, so that kernel work a previous call left behind
	// (device teardown, RCU callbacks, helpers) does not land in the next call's time.
	var settle time.Duration
	if v := os.Getenv("CNI_EXEC_SETTLE"); v != "" {
		if settle, err = time.ParseDuration(v); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	spin := os.Getenv("CNI_EXEC_SPIN") == "1"
	configs := map[string][]byte{}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	lines := bufio.NewScanner(plan)
	for lines.Scan() {
		f := strings.Fields(lines.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) != 8 {
			fmt.Fprintf(os.Stderr, "bad plan line %q\n", lines.Text())
			os.Exit(2)
		}
		label, plugin, config, command, id, netns, ifname, path := f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]
		conf, ok := configs[config]
		if !ok {
			if conf, err = os.ReadFile(config); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
			configs[config] = conf
		}
		if netns == "-" {
			netns = ""
		}
		if settle > 0 {
			if spin {
				for end := time.Now().Add(settle); time.Now().Before(end); {
				}
			} else {
				time.Sleep(settle)
			}
		}
		var stdout, stderr bytes.Buffer
		c := exec.Command(plugin)
		c.Env = append(os.Environ(),
			"CNI_COMMAND="+command,
			"CNI_CONTAINERID="+id,
			"CNI_NETNS="+netns,
			"CNI_ARGS=",
			"CNI_IFNAME="+ifname,
			"CNI_PATH="+path,
		)
		c.Stdin = bytes.NewReader(conf)
		c.Stdout = &stdout
		c.Stderr = &stderr
		t0 := time.Now()
		err := c.Run()
		d := time.Since(t0)
		if err != nil {
			out.Flush()
			fmt.Fprintf(os.Stderr, "FAIL %s %s %s: %v\n%s%s", label, command, plugin, err, stdout.String(), stderr.String())
			os.Exit(1)
		}
		fmt.Fprintf(out, "%s %d\n", label, d.Microseconds())
	}
}
