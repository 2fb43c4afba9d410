"""Shared fixtures: small real data files, a helper that runs the real `mlops` command, and a real moto server."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mlops.data.demo import demo_data

MLOPS = [str(Path(sys.executable).parent / "mlops")]  # the installed console script, as a user runs it


@pytest.fixture
def small_demo(tmp_path) -> Path:
    "A small demo dataset (4 items × 90 days, 14 future days) as CSV."
    path = tmp_path / "small.csv"
    demo_data(n_items=4, periods=90, future_periods=14).to_csv(path, index=False)
    return path


def run_mlops(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    "Run the `mlops` command in a fresh process, as a user would; with `cwd`, its local state is `cwd/.mlops`."
    home = {"MLOPS_HOME": str(Path(cwd) / ".mlops")} if cwd is not None else {}
    return subprocess.run([*MLOPS, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200", **home, **(env or {})})


def pytest_configure(config):
    config.addinivalue_line("markers", "slow_first_run: builds a cached environment on its first run (minutes); seconds after")


# Under pytest-xdist (`make test`: -n 2 --dist loadgroup) a group's tests run on one worker, in order. Each module (or
# nbval notebook) is a group, so that its module-scoped fixtures are built once; the modules of SPREAD have independent
# tests, shared out one by one (the chapters); the modules of SHARED read one session-scoped workspace, so they share
# a worker and that one run. The slowest groups go first, so that the two workers end at about the same time. (The
# groups are made here, from node ids, in the controller's scheduler: xdist's `xdist_group` marks rewrite `_nodeid`,
# which pytest 9 no longer reads.)
SPREAD = {f"tests/{name}.py" for name in (  # modules without module- or session-scoped fixtures (a moto server is one)
    "test_chapters_in_jupyter", "test_your_data", "test_new_step", "test_step_notebooks", "test_engine", "test_cli",
    "test_container_contract", "test_executor_entry_points", "test_features_bad_input", "test_framework_processing",
    "test_layout", "test_notebook_job", "test_render", "test_semantics", "test_service_rules")}
SHARED = {"tests/test_tracking.py": "trained", "tests/test_events.py": "trained", "tests/test_serve.py": "trained"}
SLOWEST_FIRST = ["test_image_environment", "test_resume", "trained", "test_runner", "test_deepar", "test_your_data",
                 "test_forkserver", "test_step_notebooks", "test_refusals", "test_remote", "test_stack", "test_new_step"]


def group_of(nodeid: str) -> str | None:
    "The group of a test: its module's (or SHARED's name for it); None for a test of a SPREAD module."
    module = nodeid.split("::", 1)[0]
    if module in SPREAD: return None
    return SHARED.get(module, Path(module).stem)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: without it (-p no:xdist), nothing
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup": return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid) or nodeid
    return ModuleGroups(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    "The slowest groups first, then the other groups, then the tests shared out one by one; each group in its own order."
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    def key(item):  # a shared-out test of a slow module goes where its module would
        name = group_of(item.nodeid) or Path(item.nodeid.split("::", 1)[0]).stem
        return rank.get(name, len(rank) + (group_of(item.nodeid) is None))
    items.sort(key=key)  # stable


@pytest.fixture(scope="session", autouse=True)
def private_fork_servers():
    "The fork servers that the suite's `mlops run` start are its own (a private runtime folder), stopped at the end."
    import shutil, tempfile
    folder, before = tempfile.mkdtemp(prefix="fs"), {k: os.environ.get(k) for k in ("XDG_RUNTIME_DIR", "MLOPS_FORKSERVER_IDLE")}
    os.environ.update(XDG_RUNTIME_DIR=folder, MLOPS_FORKSERVER_IDLE="120")
    yield
    subprocess.run([sys.executable, "-m", "mlops.engine.forkserver", "stop", "--all"], capture_output=True, timeout=60)
    for key, value in before.items():
        if value is None: os.environ.pop(key, None)
        else: os.environ[key] = value
    shutil.rmtree(folder, ignore_errors=True)


# a suite that kills `mlops run` at a precise moment runs it in its own process: run in the fork server, it would end a
# moment after its command (the server kills it when the command goes; tests/test_forkserver.py)
IN_ITS_OWN_PROCESS = {"MLOPS_FORKSERVER": "0"}


# the pipeline's parameters for a training run of a few seconds on tiny data (one copy for every end-to-end suite)
TINY = ["-p", "Epochs=1", "-p", "NumCells=8", "-p", "NumLayers=1", "-p", "MiniBatchSize=32", "-p", "NumEvalSamples=20",
        "-p", "PredictionLength=7", "-p", "ContextLength=14", "-p", "QualityThreshold=10"]


def tiny_data(root: Path) -> Path:
    "Tiny demo data in `root`: train.csv (6 items × 120 days) and future.csv (the same and 7 future days, for inference)."
    demo_data(n_items=6, periods=120).to_csv(root / "train.csv", index=False)
    demo_data(n_items=6, periods=120, future_periods=7).to_csv(root / "future.csv", index=False)
    return root


def private_workspace(root: Path) -> dict:
    "A private MLOPS_HOME under `root`, its own copy of the step notebooks, and tiny data: what a suite that runs `mlops` needs."
    import shutil
    from mlops.config import project_root
    tiny_data(root)
    shutil.copytree(project_root() / "nbs" / "processing", root / "notebooks")
    return {"root": root, "home": root / "home",
            "env": {"MLOPS_HOME": str(root / "home"), "MLOPS_NOTEBOOKS_DIR": str(root / "notebooks")}}


# a real moto_server process on 127.0.0.1, one per test module that asks for it (tests/test_remote.py, tests/test_refusals.py)
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dummy_aws_env(tmp: Path) -> dict:
    "The environment without any real AWS configuration, plus dummy credentials."
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": str(tmp / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true", "COLUMNS": "160"}


class MotoServer:
    "A moto_server process: its URL, a boto3 client factory, and the API actions it has recorded."

    def __init__(self, url: str, recording: Path, env: dict):
        self.url, self.recording, self.env = url, recording, env

    def client(self, service: str):
        import boto3
        return boto3.client(service, endpoint_url=self.url, region_name=REGION, aws_access_key_id="testing",
                            aws_secret_access_key="testing")

    def post(self, path: str):
        urllib.request.urlopen(urllib.request.Request(self.url + path, method="POST"), timeout=10).read()

    def actions(self) -> list[str]:
        "Every request received since the last reset: 'SageMaker.X' for SageMaker, 'S3 METHOD path' for S3."
        found = []
        for line in self.recording.read_text().splitlines():
            entry = json.loads(line)
            target = entry["headers"].get("X-Amz-Target")
            found.append(target if target else f"S3 {entry['method']} {entry['url'].split(self.url, 1)[-1]}")
        return found

    def run(self, *args, env=None, endpoint=True) -> subprocess.CompletedProcess:
        "`mlops ARGS --endpoint-url URL` in a fresh process, from the repository root."
        from mlops.config import project_root
        argv = [*MLOPS, *map(str, args)]
        if endpoint:
            argv += ["--endpoint-url", self.url]
        return subprocess.run(argv, capture_output=True, text=True, cwd=project_root(), env=env or self.env, timeout=120)


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("moto")
    port, recording = free_port(), tmp / "recording.jsonl"
    env = dummy_aws_env(tmp)
    server_bin = Path(sys.executable).parent / "moto_server"
    command = [str(server_bin)] if server_bin.exists() else [sys.executable, "-m", "moto.server"]
    process = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL,
                               env={**env, "MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(recording)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {url} (exit code {process.poll()})")
                time.sleep(0.1)
        yield MotoServer(url, recording, env)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


# One trained workspace for the modules that read it (tests/test_tracking.py, tests/test_events.py: SHARED above, so
# that under xdist they share one worker and this one run). Its tests may add executions,
# versions and approvals of their own; they read the trained execution by its id, never as "the latest".
TRAINED_EPOCHS = 3  # a loss curve of three points
TRAINED_ARGS = [f"Epochs={TRAINED_EPOCHS}" if arg == "Epochs=1" else arg for arg in TINY]


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory) -> dict:
    """A private MLOPS_HOME after one training run (3 epochs) on tiny data (train.csv; changed.csv: the same with one item
    changed; future.csv: 7 future rows), its output piped as in CI: `stream` holds each line as read, with whether the
    command was still running then; `followed` is what `mlops events ID --follow --json`, started as the run began, printed."""
    import threading
    from mlops.engine.execution import Execution
    from mlops.engine.records import Records
    root = tmp_path_factory.mktemp("trained")
    data = demo_data(n_items=6, periods=120)
    data.to_csv(root / "train.csv", index=False)
    changed = data.copy()
    changed.loc[changed["item_id"] == changed["item_id"].iloc[0], "target"] += 1
    changed.to_csv(root / "changed.csv", index=False)
    demo_data(n_items=6, periods=120, future_periods=7).to_csv(root / "future.csv", index=False)
    home = root / "home"
    workspace = {"root": root, "home": home, "env": {"MLOPS_HOME": str(home)}}
    command = [*MLOPS, "run", "--data", str(root / "train.csv"), *TRAINED_ARGS]
    with open(root / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   env={**os.environ, "COLUMNS": "200", **workspace["env"]})
        stream = []
        reader = threading.Thread(target=lambda: stream.extend((line.rstrip("\n"), process.poll() is None) for line in process.stdout))
        reader.start()
        events, deadline = home / "events.jsonl", time.time() + 120
        while not (events.is_file() and events.read_text().count("\n")):  # the first line: the execution started
            assert process.poll() is None and time.time() < deadline, (root / "stderr.txt").read_text()
            time.sleep(0.05)
        execution_id = json.loads(events.read_text().splitlines()[0])["detail"]["pipelineExecutionArn"].rsplit("/", 1)[1]
        followed = run_mlops("events", execution_id, "--follow", "--json", cwd=root, env=workspace["env"])  # returns when it ends
        process.wait(timeout=600)
        reader.join(timeout=60)
    output = "\n".join(line for line, _ in stream)
    assert process.returncode == 0, output + (root / "stderr.txt").read_text()
    assert "registered model: arn:aws:sagemaker:local:000000000000:model-package/deepar-forecast/1" in " ".join(output.split())
    assert Records(home / "runs.db").executions(1)[0]["id"] == execution_id
    return {**workspace, "stream": stream, "followed": followed, "execution": Execution.load(execution_id, home)}
