"""The suite's fork server (tests/forked.py) answers as ``python -m scrapy`` does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.forked import REPO, run_scrapy, scrapy_process


def fresh(args: list[str], cwd, env) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scrapy", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_a_forked_run_prints_and_exits_as_a_fresh_interpreter_does(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMGCACHE_PROBE": "seen"}
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    for args in (["version"], ["imgcache-stats"], ["imgcache-stats", "--jsn"], ["no-such-command"]):
        forked, real = run_scrapy(args, cwd=tmp_path, env=env), fresh(args, tmp_path, env)
        assert (forked.returncode, forked.stdout, forked.stderr) == (real.returncode, real.stdout, real.stderr), args
    assert list(tmp_path.iterdir()) == []  # ran in tmp_path, which a read-only command leaves alone


def test_a_forked_run_has_its_own_folder_environment_and_pid_and_dies_of_a_signal(tmp_path):
    code = "import os; print(os.getcwd(), os.environ['IMGCACHE_PROBE'], os.getpid())"
    (tmp_path / "probe.py").write_text(f"{code}\nimport time; time.sleep(60)\n")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "IMGCACHE_PROBE": "mine"}
    proc = scrapy_process(["runspider", "probe.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    folder, probe, pid = proc.stdout.readline().split()
    assert (folder, probe, int(pid)) == (str(tmp_path), "mine", proc.pid) and proc.pid != os.getpid()
    assert proc.poll() is None
    proc.kill()
    assert proc.wait(30) == -signal.SIGKILL
    proc.stdout.close()
