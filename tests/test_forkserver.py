"""The dev server (mlops.engine.forkserver): a job forked from it is `python -m module` as a fresh process would run it
(its streams, folder, own environment, exit status and signals; our package imported from today's files; the same
DeepAR digits), it never outlives its caller, and the server ends when idle."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

LIGHT = "json"  # a server that preloads little: quick to start, for what does not depend on the libraries


def server_env(runtime: Path, preload: str | None = LIGHT, **more) -> dict:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "MLOPS_FORKSERVER": "1", **more}
    env.pop("MLOPS_FORKSERVER_PRELOAD", None)
    if preload is not None: env["MLOPS_FORKSERVER_PRELOAD"] = preload
    return env


def in_env(env: dict, code: str) -> str:
    "Run `code` in a fresh Python with `env` (the client side of the server, as `mlops` would be); its stdout."
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def start_server(env: dict, timeout: float = 120) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "mlops.engine.forkserver", "serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    path = Path(in_env(env, "from mlops.engine.forkserver import socket_path; print(socket_path())").strip())
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert server.poll() is None, server.stderr.read()
        assert time.monotonic() < deadline, "the fork server did not become ready"
        time.sleep(0.05)
    return server


def short_folder() -> Path:
    "A private folder with a short path (a Unix socket's path must fit in 108 bytes; pytest's folders are long)."
    import tempfile
    return Path(tempfile.mkdtemp(prefix="fs"))


@pytest.fixture
def light_server():
    env = server_env(short_folder(), MLOPS_SERVER_ONLY="1")
    server = start_server(env)
    yield env, server
    server.terminate(); server.wait(10)


PROBE = textwrap.dedent("""
    import json, os, sys
    print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "color": os.environ.get("MLOPS_PROBE_COLOR"), "server_only": os.environ.get("MLOPS_SERVER_ONLY"),
                      "own_modules_at_start": [m for m in sys.modules if m == "mlops" or m.startswith("mlops.")],
                      "parent": os.getppid(), "path0": sys.path[0]}))
    print("to stderr", file=sys.stderr)
    sys.exit(int(sys.argv[1]))
""")


def test_a_job_is_python_m_in_its_folder_environment_and_streams(light_server, tmp_path):
    env, server = light_server
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "probe.py").write_text(PROBE)
    out = in_env({**env, "MLOPS_PROBE_COLOR": "teal"}, textwrap.dedent(f"""
        import os, subprocess
        from mlops.engine.forkserver import spawn
        env = {{k: v for k, v in os.environ.items() if k != "MLOPS_SERVER_ONLY"}}
        job = spawn(["probe", "3", "x y"], {str(tmp_path / "job")!r}, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert job is not None, "no server"
        print(job.stdout.read()); print("exit", job.wait())
    """))
    report = json.loads(next(l for l in out.splitlines() if l.startswith("{")))
    assert report["argv"] == ["3", "x y"] and report["cwd"] == str(tmp_path / "job") and report["path0"] == str(tmp_path / "job")
    assert report["color"] == "teal" and report["server_only"] is None  # the job's environment, not the server's
    assert report["own_modules_at_start"] == []  # our package comes from the files as they are now, not the server's copy
    assert report["parent"] == server.pid  # a fork of the server, not a fresh interpreter
    assert "to stderr" in out and out.strip().endswith("exit 3")


def test_a_job_ends_with_its_caller_and_by_signal(light_server, tmp_path):
    env, _ = light_server
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "sleeper.py").write_text("import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(60)\n")
    out = in_env(env, textwrap.dedent(f"""
        import os, subprocess, time
        from mlops.engine.forkserver import spawn
        job = spawn(["sleeper"], {str(tmp_path / "job")!r}, dict(os.environ), stdout=subprocess.PIPE, text=True)
        job.stdout.readline(); job.terminate(); print("terminated", job.wait())
        job = spawn(["sleeper"], {str(tmp_path / "job")!r}, dict(os.environ), stdout=subprocess.PIPE, text=True)
        pid = int(job.stdout.readline())
        job._conn.close()  # the caller goes away (as when it is killed): the server kills its job
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try: os.kill(pid, 0); time.sleep(0.05)
            except ProcessLookupError: print("gone with its caller"); break
    """))
    assert f"terminated {-signal.SIGTERM}" in out  # as subprocess reports a signal
    assert "gone with its caller" in out


def test_a_stopped_server_takes_no_new_job_and_lets_the_running_ones_end(light_server, tmp_path):
    env, server = light_server
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "waiter.py").write_text("import sys, time\nprint('started', flush=True)\ntime.sleep(1)\nsys.exit(5)\n")
    out = in_env(env, textwrap.dedent(f"""
        import os, subprocess
        from mlops.engine.forkserver import spawn, stop
        job = spawn(["waiter"], {str(tmp_path / "job")!r}, dict(os.environ), stdout=subprocess.PIPE, text=True)
        job.stdout.readline()
        print("stopped", stop())
        print("new job", spawn(["waiter"], {str(tmp_path / "job")!r}, dict(os.environ)))
        print("exit", job.wait())
    """))
    assert "stopped 1" in out and "new job None" in out
    assert "exit 5" in out  # its own status, not a killed job's
    assert server.wait(10) == 0


def test_no_server_means_none_and_an_idle_server_ends():
    runtime = short_folder()
    env = server_env(runtime, MLOPS_FORKSERVER_IDLE="1")
    probe = "import os; from mlops.engine.forkserver import spawn; print(spawn(['json.tool'], '.', dict(os.environ)))"
    assert in_env(env, probe).strip() == "None"
    server = start_server(env)
    assert in_env({**env, "MLOPS_FORKSERVER": "0"}, probe).strip() == "None"
    assert server.wait(15) == 0  # idle for a second: it ended by itself
    assert not list(runtime.rglob("*.sock"))


def test_a_change_that_matters_at_import_means_another_server(tmp_path):
    env = server_env(short_folder())
    code = "from mlops.engine.forkserver import socket_path; print(socket_path())"
    assert in_env(env, code) == in_env(env, code)
    assert in_env({**env, "OMP_NUM_THREADS": "1"}, code) != in_env(env, code)
    assert in_env({**env, "PYTHONPATH": str(tmp_path)}, code) != in_env(env, code)


@pytest.fixture(scope="module")
def full_server(tmp_path_factory):
    "A server with the real preload (torch, lightning, GluonTS, MLflow…), private to this module."
    env = server_env(short_folder(), preload=None, MLOPS_FORKSERVER_IDLE="300")
    server = start_server(env)
    yield env, server
    server.terminate(); server.wait(10)


def test_deepar_trained_in_a_fork_gives_the_digits_of_a_fresh_process(full_server, tmp_path):
    from mlops.data.demo import demo_data
    from mlops.data.features import build_features
    from mlops.data.series import SeriesColumns, validate_series
    env, _ = full_server
    table = validate_series(demo_data(n_items=4, periods=90), SeriesColumns(), freq="D")
    build_features(table, tmp_path / "channels", mode="train", prediction_length=7, context_length=14)
    args = ["train", "--train", str(tmp_path / "channels" / "train"), "--test", str(tmp_path / "channels" / "test"),
            "-p", "epochs", "2", "-p", "prediction_length", "7", "-p", "context_length", "14", "-p", "num_cells", "8",
            "-p", "time_freq", "D", "-p", "num_eval_samples", "20"]
    metrics = {}
    for how in ("fresh", "forked"):
        run = [*args, "--model-dir", str(tmp_path / how / "model"), "--output-dir", str(tmp_path / how / "output")]
        if how == "fresh":
            done = subprocess.run([sys.executable, "-m", "mlops.deepar", *run], env={**env, "MLOPS_FORKSERVER": "0"},
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr
        else:
            out = in_env(env, f"import os, subprocess\nfrom mlops.engine.forkserver import spawn\n"
                              f"job = spawn(['mlops.deepar', *{run!r}], '.', dict(os.environ), stdout=subprocess.PIPE, text=True)\n"
                              "assert job is not None\nprint(job.stdout.read()); print('exit', job.wait())")
            assert out.strip().endswith("exit 0"), out
        metrics[how] = json.loads((tmp_path / how / "output" / "metrics.json").read_text())
    assert metrics["forked"] == metrics["fresh"]  # digit for digit
