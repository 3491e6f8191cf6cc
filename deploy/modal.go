package deploy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// tailLines is how many of a command's last output lines an error shows.
const tailLines = 15

// modalPath finds the modal CLI, or says how to install it.
func (d *Deployer) modalPath() (string, error) {
	name := d.Modal
	if name == "" {
		name = "modal"
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("the modal CLI was not found (%s): install it with `pip install modal` "+
			"(or `uv tool install modal`), then run `modal setup`", name)
	}
	return p, nil
}

// CheckCredentials says when Modal has no credentials to use (for the CLI
// or the Go SDK): neither
// MODAL_TOKEN_ID and MODAL_TOKEN_SECRET nor a config file from `modal
// setup`. It cannot tell whether the credentials are valid; the CLI does.
func (d *Deployer) CheckCredentials() error {
	id, secret := d.getenv("MODAL_TOKEN_ID"), d.getenv("MODAL_TOKEN_SECRET")
	if id != "" && secret != "" {
		return nil
	}
	if id != "" || secret != "" {
		return errors.New("Modal credentials: set both MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, not one")
	}
	path := d.getenv("MODAL_CONFIG_PATH")
	if path == "" {
		home := d.getenv("HOME")
		if home == "" {
			home, _ = os.UserHomeDir()
		}
		path = filepath.Join(home, ".modal.toml")
	}
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	return fmt.Errorf("no Modal credentials: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (a token from "+
		"https://modal.com/settings/tokens), or run `modal setup`, which writes %s", path)
}

// ready checks what every modal command needs.
func (d *Deployer) ready() (string, error) {
	modal, err := d.modalPath()
	if err != nil {
		return "", err
	}
	return modal, d.CheckCredentials()
}

// run runs the modal CLI with args, passing each output line (stdout and
// stderr, as they come) to line. On failure the error carries the last
// lines of output.
func (d *Deployer) run(ctx context.Context, modal string, args []string, line func(string)) error {
	cmd := exec.CommandContext(ctx, modal, args...)
	// A wide terminal, so that the CLI does not wrap the endpoint's line.
	env := d.env()
	cmd.Env = append(env[:len(env):len(env)], "COLUMNS=1000")
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) } // let it stop cleanly first
	cmd.WaitDelay = 10 * time.Second                                      // then kill it, and stop waiting for its output
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var tail []string
	var wg sync.WaitGroup
	wg.Go(func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			text := strings.TrimRight(sc.Text(), "\r")
			if tail = append(tail, text); len(tail) > tailLines {
				tail = tail[1:]
			}
			if line != nil {
				line(text)
			}
		}
		_, _ = io.Copy(io.Discard, pr) // a line too long: keep the command from blocking
	})
	err := cmd.Start()
	if err == nil {
		err = cmd.Wait()
	}
	pw.Close()
	wg.Wait()
	if err != nil {
		msg := fmt.Sprintf("modal %s: %v", args[0], err)
		if len(tail) > 0 {
			msg += "; its last output:\n    " + strings.Join(tail, "\n    ")
		}
		return errors.New(msg)
	}
	return nil
}

// envArgs are the CLI arguments that pick the Modal environment.
func (d *Deployer) envArgs() []string {
	if env := d.deploy().Environment; env != "" {
		return []string{"-e", env}
	}
	return nil
}

// output runs the modal CLI with args and returns its standard output;
// standard error (warnings, progress) is kept apart, for the error.
func (d *Deployer) output(ctx context.Context, modal string, args []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, modal, args...)
	cmd.Env = d.env()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		lines = lines[max(0, len(lines)-tailLines):]
		return nil, fmt.Errorf("modal %s: %v; its last output:\n    %s", strings.Join(args, " "), err, strings.Join(lines, "\n    "))
	}
	return out, nil
}
