"""Local jobs forked from the zygote behave like fresh `python -m ftlab ...` processes: exit codes,
one-line errors, output tails, timeouts that kill the job, their own working directory and
environment, and a fresh process whenever a fork would not be equivalent."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from ftlab.jobs import zygote as zygotes
from ftlab.jobs.process import ftlab_argv, worker_env

pytestmark = pytest.mark.skipif(not zygotes.supported(), reason="the zygote forks: Linux only")


@pytest.fixture
def zygote():
    # Made in the test's call phase: the zygote serves jobs whose environment equals its own, and
    # pytest's PYTEST_CURRENT_TEST differs between a fixture's setup and the call.
    made: list[zygotes.Zygote] = []

    def make() -> zygotes.Zygote:
        made.append(zygotes.Zygote(worker_env(1)))
        return made[-1]

    yield make
    for z in made:
        z.close()


def test_a_forked_job_exits_prints_and_fails_like_a_fresh_process(zygote, tmp_path):
    zygote = zygote()
    ok = zygote.run(ftlab_argv(tmp_path, "evaluate", "--help"), cwd=tmp_path, threads=1, timeout_s=None, env=None,
                    name="help")
    assert ok is not None and zygote._proc is not None and zygote._proc.poll() is None  # forked, not spawned
    assert ok.ok and ok.returncode == 0 and ok.error is None
    assert any(line.startswith("usage: ftlab evaluate") for line in ok.output_tail), ok.output_tail

    bad = zygote.run(ftlab_argv(tmp_path, "evaluate", str(tmp_path / "no-such-model"), "--datasets", "synthetic-arith"),
                     cwd=tmp_path, threads=1, timeout_s=None, env=None, name="bad")
    assert not bad.ok and bad.returncode == 2
    assert "no-such-model" in bad.error and not any("Traceback" in line for line in bad.output_tail), bad.output_tail

    # `ftlab doctor` reports them: --workdir is resolved against the job's cwd into FTLAB_HOME (in the
    # job's environment only), and torch runs with the job's thread budget, not the zygote's.
    # (A driver gives every job its id, FTLAB_JOB, which nothing reads at import: still forked.)
    r = zygote.run(ftlab_argv("ws", "doctor"), cwd=tmp_path, threads=2, timeout_s=None, env={"FTLAB_JOB": "j1"},
                   name="doctor")
    assert r is not None and r.ok, r and r.output_tail
    facts = dict(line.split(None, 1) for line in r.output_tail if line and not line.startswith(" ") and " " in line)
    assert facts["workspace"].strip() == f"{tmp_path / 'ws'} (not created yet)"
    assert facts["torch_threads"].strip() == "2"
    assert "FTLAB_HOME" not in os.environ or os.environ["FTLAB_HOME"] != str(tmp_path / "ws")


def test_a_timed_out_forked_job_is_killed(zygote, tmp_path):
    zygote = zygote()
    t0 = time.monotonic()
    slow = zygote.run(ftlab_argv(tmp_path, "evaluate", "scratch:tiny", "--datasets", "synthetic-arith", "--limit", "5000",
                                 "--threads", "1"), cwd=tmp_path, threads=1, timeout_s=1.0, env=None, name="slow")
    assert slow.timed_out and not slow.ok and slow.returncode == -signal.SIGKILL
    assert slow.error == "timed out after 1 s and was killed"
    assert time.monotonic() - t0 < 120  # the zygote's start (its imports) included
    assert not (tmp_path / "Testing" / "metrics" / "tiny.json").exists()


def test_jobs_that_a_fork_would_change_start_fresh(zygote, tmp_path):
    zygote = zygote()
    # Another program, or an environment that differs beyond thread counts (CUDA_VISIBLE_DEVICES,
    # any variable a library reads at import): not forked.
    assert zygote.run([sys.executable, "-c", "print(1)"], cwd=tmp_path, threads=1, timeout_s=None, env=None,
                      name="other") is None
    assert zygote.run(ftlab_argv(tmp_path, "evaluate", "--help"), cwd=tmp_path, threads=1, timeout_s=None,
                      env={"CUDA_VISIBLE_DEVICES": "0"}, name="gpu") is None
    assert zygotes.ftlab_args(ftlab_argv(tmp_path, "study", "run")) == ["--workdir", str(tmp_path), "study", "run"]
