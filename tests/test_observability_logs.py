"""Structured logs: --log-format json gives one JSON object per line, with ids and the Raft term.

A formatter test covers the fields (extra= ids, exceptions on one line, the
text format's key=value tail); a process test runs a real controller with
--log-format json, submits a job, stops it, and parses every line it wrote.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time

from controller.observability import logs
from lepton.client import LeptonClient
from lepton.v1 import types_pb2
from tests.support.procs import ControllerCluster


def _logger(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logs.JsonFormatter() if fmt == "json" else logs.TextFormatter())
    handler.addFilter(logs.ContextFilter({"controller": "c1"}, {"term": lambda: 7}))
    lg = logging.getLogger(f"test.obs.{fmt}")
    lg.handlers[:] = [handler]
    lg.propagate = False
    lg.setLevel(logging.INFO)
    return lg, buf


def test_json_lines_carry_ids_term_and_one_line_tracebacks():
    lg, buf = _logger("json")
    lg.info("task %s placed", "j1.0", extra={"node_id": "n1", "job_id": "j1", "task_id": "j1.0"})
    lg.info("explicit term wins", extra={"term": 3})
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        lg.exception("it failed")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3
    docs = [json.loads(line) for line in lines]
    assert docs[0]["msg"] == "task j1.0 placed" and docs[0]["level"] == "INFO"
    assert (docs[0]["node_id"], docs[0]["job_id"], docs[0]["task_id"]) == ("n1", "j1", "j1.0")
    assert docs[0]["controller"] == "c1" and docs[0]["term"] == 7
    assert docs[0]["ts"].endswith("+00:00")
    assert docs[1]["term"] == 3
    assert "ValueError: boom" in docs[2]["exc"]


def test_text_format_is_human_with_a_key_value_tail():
    lg, buf = _logger("text")
    lg.info("agent connected", extra={"node_id": "n1"})
    (line,) = buf.getvalue().splitlines()
    assert "INFO test.obs.text: agent connected" in line
    assert line.endswith("node_id=n1 term=7")
    assert "controller=" not in line  # said once at start, not on every line


def test_controller_process_writes_only_json_lines(tmp_path):
    c = ControllerCluster(tmp_path, 1, extra=["--log-format", "json"])
    c.start()
    (p,) = c.procs.values()
    try:
        with LeptonClient([p.api], timeout=30) as client:
            end = time.monotonic() + 30
            while True:
                try:
                    if client.cluster_status().leader_id:
                        break
                except Exception:
                    if time.monotonic() > end:
                        raise
                time.sleep(0.1)
            spec = types_pb2.JobSpec(
                name="logged",
                count=1,
                template=types_pb2.TaskTemplate(
                    command="true", resources=types_pb2.Resources(cpu_millis=100, memory_bytes=2**20)
                ),
            )
            job_id = client.submit_job(spec).job.id
            end = time.monotonic() + 30
            while "job.submitted" not in p.log_path.read_text() and time.monotonic() < end:
                time.sleep(0.1)
        assert p.terminate() == 0
        text = p.log_path.read_text()
        docs = []
        for line in text.splitlines():
            try:
                docs.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"not a JSON line: {line!r}") from None
        assert docs and all({"ts", "level", "logger", "msg"} <= d.keys() for d in docs)
        assert any("listening on" in d["msg"] for d in docs)
        assert all(d.get("controller") == "c1" for d in docs)
        submitted = [d for d in docs if d.get("event") == "job.submitted"]
        assert submitted and submitted[0]["job_id"] == job_id and submitted[0]["term"] >= 1
        assert any(d.get("event") == "leader.changed" for d in docs)
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.close()


def test_bad_log_format_is_a_usage_error():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.main",
            "--id",
            "c1",
            "--data-dir",
            "/nonexistent",
            "--log-format",
            "xml",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--log-format" in proc.stderr
