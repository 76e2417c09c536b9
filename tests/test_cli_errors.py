"""lepton-ctl error paths as a user meets them: one line on stderr, a documented exit code.

Runs the installed `lepton-ctl` as a subprocess; no controller is needed
(unreachable addresses are ports the OS handed out and nobody listens on).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(sys.executable).with_name("lepton-ctl")
CTL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "leptonctl.main"]


def dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def ctl(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop("LEPTON_CONTROLLERS", None)
    full_env.update(env or {})
    return subprocess.run(
        [*CTL, *args], input=stdin, capture_output=True, text=True, env=full_env, timeout=60
    )


def one_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_unreachable_controllers_named_exit_4():
    a, b = dead_address(), dead_address()
    r = ctl("--controllers", f"{a},{b}", "nodes", "list")
    assert r.returncode == 4
    line = one_line(r)
    assert line.startswith("lepton-ctl: no controller answered (tried ")
    assert a in line and b in line
    assert r.stdout == ""


def test_unreachable_from_env_and_after_verb():
    a = dead_address()
    r = ctl("cluster", "status", "-o", "json", env={"LEPTON_CONTROLLERS": a})
    assert r.returncode == 4 and a in one_line(r)
    b = dead_address()
    r = ctl("jobs", "list", "--controllers", b, env={"LEPTON_CONTROLLERS": a})
    assert r.returncode == 4 and b in one_line(r) and a not in r.stderr


def test_bad_job_file_points_at_line_and_field(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text(
        "name: medical\npriority: 1\ncommand: sleep 3600\nresources:\n  cpu: 10\n  network: 2G\n  memory: 12XB\n"
    )
    r = ctl("--controllers", dead_address(), "jobs", "submit", str(f))
    assert r.returncode == 5
    assert one_line(r).startswith(f"lepton-ctl: {f}:7: resources.memory: invalid memory '12XB'")


def test_bad_job_on_stdin():
    r = ctl("--controllers", dead_address(), "jobs", "submit", "-", stdin="name: x\ncommand: y\ncount: -2\n")
    assert r.returncode == 5
    assert one_line(r) == "lepton-ctl: <stdin>:3: count: must be at least 1, got -2"


def test_missing_job_file(tmp_path):
    r = ctl("--controllers", dead_address(), "jobs", "submit", str(tmp_path / "absent.yaml"))
    assert r.returncode == 5 and "absent.yaml" in one_line(r)


@pytest.mark.parametrize(
    "args, needle",
    [
        ([], "required: COMMAND"),
        (["nodes"], "required: VERB"),
        (["nodes", "explode"], "invalid choice: 'explode'"),
        (["nodes", "show"], "required: id"),
        (["-o", "xml", "nodes", "list"], "invalid choice: 'xml'"),
        (["--timeout", "soon", "nodes", "list"], "--timeout: invalid duration 'soon'"),
        (["nodes", "list", "--", "x"], "'--' is only used by 'jobs run"),
        (["completion", "fish"], "invalid choice: 'fish'"),
    ],
)
def test_usage_errors_exit_2(args, needle):
    r = ctl(*args)
    assert r.returncode == 2
    assert needle in one_line(r)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--cpu", "lots"], "--cpu: invalid cpu 'lots'"),
        (["--memory", "12XB"], "--memory: invalid memory '12XB'"),
        (["--network", "fast"], "--network: invalid network 'fast'"),
        (["--constraint", "zone ~ a"], "--constraint: invalid constraint 'zone ~ a'"),
        (["--label", "zone"], "--label: expected key=value"),
    ],
)
def test_jobs_run_bad_values_exit_5(flags, needle):
    r = ctl("--controllers", dead_address(), "jobs", "run", "x", *flags, "--", "sleep", "1")
    assert r.returncode == 5
    assert needle in one_line(r)


def test_jobs_run_without_command():
    r = ctl("--controllers", dead_address(), "jobs", "run", "x")
    assert r.returncode == 5 and "give the command after '--'" in one_line(r)


def test_help_and_version():
    r = ctl("--help")
    assert r.returncode == 0 and "Exit codes" in r.stdout
    r = ctl("--version")
    assert r.returncode == 0 and r.stdout.startswith("lepton-ctl ")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_script_completes():
    r = ctl("completion", "bash")
    assert r.returncode == 0 and "complete -F _lepton_ctl lepton-ctl" in r.stdout
    # Source it in a real bash and ask it to complete a few command lines.
    probe = r.stdout + (
        '\nshow() { COMP_WORDS=($1); COMP_CWORD=$2; _lepton_ctl; echo "${COMPREPLY[*]}"; }\n'
        "show 'lepton-ctl no' 1\n"
        "show 'lepton-ctl nodes dr' 2\n"
        "show 'lepton-ctl -o json jobs ' 4\n"
        "show 'lepton-ctl nodes drain n1 --w' 4\n"
        "show 'lepton-ctl -o ' 2\n"
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "nodes"
    assert lines[1] == "drain"
    assert set(lines[2].split()) == {"submit", "run", "list", "show", "cancel"}
    assert lines[3] == "--wait"
    assert lines[4].split() == ["table", "json", "yaml"]


def test_zsh_completion_script():
    r = ctl("completion", "zsh")
    assert r.returncode == 0
    assert r.stdout.startswith("#compdef lepton-ctl") and "bashcompinit" in r.stdout
