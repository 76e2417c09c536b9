"""The compose cluster (3 controllers + 3 agents in containers) survives losing its leader.

Marked `containers` (deselected by default): it needs a Docker engine and
docker-compose, and builds the image with deploy/containers.sh (a couple of
minutes cold, about 40 s with a warm base image and pip cache). Run with

    python3 -m pytest -m containers tests/test_containers.py

Every run uses its own compose project name, and the finalizer runs
`docker-compose down -v` for it whatever happens, so containers, network
and volumes never outlive the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.containers

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "containers.sh"
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
EXAMPLE = ROOT / "examples" / "worked-example.yaml"
CONTROLLERS = ["c1", "c2", "c3"]
DEADLINE = 120.0  # liveness bound on a shared 2-core machine, not a performance claim


def docker_ready() -> str | None:
    if shutil.which("docker") is None or shutil.which("docker-compose") is None:
        return "docker / docker-compose not installed (apt-get install -y docker.io docker-compose)"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine running (deploy/containers.sh engine)"
    return None


class Compose:
    def __init__(self, project: str):
        self.project = project
        self.base = ["docker-compose", "-p", project, "-f", str(COMPOSE_FILE)]

    def env(self) -> dict[str, str]:
        return dict(os.environ, LEPTON_COMPOSE_PROJECT=self.project)

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, env=self.env(), timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def ctl(self, via: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """lepton-ctl inside container `via` (it reaches the others by service name)."""
        return self.run("exec", "-T", via, "lepton-ctl", "--timeout", "5s", *args, check=check, timeout=60)

    def ctl_json(self, via: str, *args: str):
        proc = self.ctl(via, "-o", "json", *args, check=False)
        if proc.returncode != 0:
            return None
        try:
            return json.loads(proc.stdout)
        except json.JSONDecodeError:
            return None

    def logs(self) -> str:
        return self.run("logs", "--tail=40", check=False).stdout


def poll(fn, deadline_s: float = DEADLINE, every: float = 1.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(every)
    return None


PROJECT_PREFIX = "leptont"


def remove_stale_projects() -> None:
    """`down -v` the compose projects of test runs whose process is gone (killed before their finalizer)."""
    out = subprocess.run(
        ["docker", "ps", "-a", "--format", '{{.Label "com.docker.compose.project"}}'],
        capture_output=True,
        text=True,
    ).stdout
    for project in set(out.split()):
        m = re.fullmatch(rf"{PROJECT_PREFIX}(\d+)", project)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            subprocess.run(
                [str(SCRIPT), "down"], capture_output=True, env=Compose(project).env(), timeout=300
            )


@pytest.fixture
def compose_cluster():
    if reason := docker_ready():
        pytest.skip(reason)
    remove_stale_projects()
    project = f"{PROJECT_PREFIX}{os.getpid()}"
    compose = Compose(project)
    started = time.monotonic()
    try:
        up = subprocess.run(
            [str(SCRIPT), "up"], capture_output=True, text=True, env=compose.env(), timeout=900, cwd=ROOT
        )
        assert up.returncode == 0, f"containers.sh up failed\n{up.stdout}\n{up.stderr}"
        print(f"compose cluster {project} built and healthy in {time.monotonic() - started:.0f}s")
        print(up.stderr[-2000:])
        yield compose
    finally:
        subprocess.run([str(SCRIPT), "down"], capture_output=True, env=compose.env(), timeout=300, cwd=ROOT)
        left = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
            capture_output=True,
            text=True,
        ).stdout.split()
        assert not left, f"containers left behind: {left}"


def tasks_running(compose: Compose, via: str, expected: int):
    doc = compose.ctl_json(via, "tasks", "list")
    if doc is None:
        return None
    tasks = doc.get("tasks", doc) if isinstance(doc, dict) else doc
    running = [t for t in tasks if t.get("state") == "running"]
    return running if len(running) >= expected else None


def agreed_leader(compose: Compose, among: list[str]):
    leaders = set()
    for c in among:
        doc = compose.ctl_json(c, "--controllers", f"{c}:7001", "cluster", "status", "--stale")
        if doc is None:
            return None
        leaders.add(doc.get("leader"))
    if len(leaders) == 1 and (leader := leaders.pop()) in among:
        return leader
    return None


def test_compose_cluster_survives_leader_kill(compose_cluster):
    compose = compose_cluster
    leader = poll(lambda: agreed_leader(compose, CONTROLLERS))
    assert leader, compose.logs()

    # Submit the worked example from inside a controller container.
    subprocess.run(
        ["docker", "cp", str(EXAMPLE), f"{compose.container('c1')}:/tmp/worked-example.yaml"], check=True
    )
    compose.ctl("c1", "jobs", "submit", "/tmp/worked-example.yaml")
    before = poll(lambda: tasks_running(compose, "c1", 4))
    assert before, compose.logs()
    placement = {t["id"]: t["node"] for t in before}

    # SIGKILL the leader's container; the survivors elect a new leader.
    killed_at = time.monotonic()
    subprocess.run(["docker", "kill", compose.container(leader)], check=True, capture_output=True)
    survivors = [c for c in CONTROLLERS if c != leader]
    new_leader = poll(lambda: agreed_leader(compose, survivors))
    assert new_leader in survivors, compose.logs()
    # Informational only (includes `docker exec` round trips of ~0.5 s each): no timed assertion.
    print(
        f"leader {leader} killed; survivors agree on {new_leader} after {time.monotonic() - killed_at:.1f}s"
    )

    # The cluster carries on: the tasks still run where they ran, and a new write commits.
    after = poll(lambda: tasks_running(compose, new_leader, 4))
    assert after and {t["id"]: t["node"] for t in after} == placement, compose.logs()
    compose.ctl(new_leader, "jobs", "run", "after-failover", "--cpu", "1", "--", "sleep", "600")
    assert poll(lambda: tasks_running(compose, new_leader, 5)), compose.logs()

    # The old leader comes back with its volume and rejoins as a follower.
    compose.run("start", leader)
    assert poll(lambda: agreed_leader(compose, CONTROLLERS)) in CONTROLLERS, compose.logs()
