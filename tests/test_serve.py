"""`mlops serve` and `mlops predict`: a registered DeepAR version (conftest's trained workspace, read only) served on a
free loopback port as SageMaker hosts a model container (GET /ping, POST /invocations), answering DeepAR's request
formats as the batch transform answers the same instances, refusing malformed requests with a 4xx and a reason, and
gone, with all it started, after Ctrl+C.

Formats: "DeepAR Inference Formats", https://docs.aws.amazon.com/sagemaker/latest/dg/deepar-in-formats.html (JSON
`instances` + `configuration`, answered with `predictions`; JSON Lines, one instance a line, as batch transform reads them).
The container contract: https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-inference-code.html (GET /ping
answers 200 when healthy; POST /invocations)."""
import http.client
import json
import os
import signal
import socket
import subprocess
import time
import uuid

import numpy as np
import pandas as pd
import pytest

from conftest import MLOPS, run_mlops
from test_processes_left import MARKER, command_lines, left_after

VERSION = "deepar-forecast/1"  # what the trained workspace registered (pending approval: the workspace is only read)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def workspace(trained_workspace):
    return trained_workspace


@pytest.fixture(scope="module")
def requests(workspace, tmp_path_factory):
    "The demo series of future.csv as the inference pipeline prepares them (the version's feature state), and the batch transform's answer."
    from mlops.cli.serve import feature_state, served_version
    from mlops.data.features import build_features, min_series_length
    from mlops.data.series import read_series
    from mlops.deepar.predictor import transform
    folder = tmp_path_factory.mktemp("requests")
    previous = os.environ.get("MLOPS_HOME")
    os.environ["MLOPS_HOME"] = str(workspace["home"])
    try:
        version = served_version(VERSION)
        state = feature_state(version)
    finally:
        if previous is None: os.environ.pop("MLOPS_HOME")
        else: os.environ["MLOPS_HOME"] = previous
    table = read_series(workspace["root"] / "future.csv", state.series_columns, freq=state.freq,
                        min_length=min_series_length("infer", state.context_length, state.prediction_length, state.test_windows))
    build_features(table, folder, "infer", state)
    lines = (folder / "inference" / "requests.jsonl").read_bytes()
    [output] = transform(version["archive"], folder / "inference", folder / "transform")  # DEEPAR_INFERENCE_CONFIG unset: defaults
    return {"folder": folder, "lines": lines, "instances": [json.loads(l) for l in lines.splitlines()],
            "transformed": [json.loads(l) for l in output.read_bytes().splitlines()], "output": output, "state": state}


@pytest.fixture(scope="module")
def server(workspace, tmp_path_factory):
    "`mlops serve deepar-forecast/1 --port N` in its own process, with a marker in its environment; ready (ping 200)."
    port, marker, logs = free_port(), uuid.uuid4().hex, tmp_path_factory.mktemp("serve")
    env = {k: v for k, v in os.environ.items() if k != "DEEPAR_INFERENCE_CONFIG"}
    env.update({**workspace["env"], MARKER: marker, "COLUMNS": "200"})
    with open(logs / "stdout", "w") as out, open(logs / "stderr", "w") as err:
        process = subprocess.Popen([*MLOPS, "serve", VERSION, "--port", str(port)], cwd=workspace["root"], env=env,
                                   stdout=out, stderr=err, text=True)
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, (logs / "stdout").read_text() + (logs / "stderr").read_text()
        try:
            if call(port, "GET", "/ping")[0] == 200: break
        except OSError:
            pass
        assert time.monotonic() < deadline, "no 200 from /ping within 120 s\n" + (logs / "stderr").read_text()
        time.sleep(0.1)
    yield {"port": port, "process": process, "marker": marker, "logs": logs}
    if process.poll() is None:
        process.kill()
        process.wait()


def test_json_request_gets_the_batch_transforms_quantiles(server, requests):
    status, kind, body = call(server["port"], "POST", "/invocations", json.dumps({"instances": requests["instances"]}),
                              {"Content-Type": "application/json", "Accept": "application/json"})
    assert (status, kind) == (200, "application/json"), body
    predictions = json.loads(body)["predictions"]
    assert len(predictions) == len(requests["transformed"]) == 6
    # Both sample with the same seed (DeepARPredictor.forecast: seed 0 per request) on the same instances in the same
    # order, with the same num_samples (100, DeepAR's default): the same sample paths, so the same quantiles; the
    # tolerance only allows for float summation order (a different number of torch threads in the two processes).
    for served, transformed in zip(predictions, requests["transformed"]):
        assert sorted(served["quantiles"], key=float) == sorted(transformed["quantiles"], key=float) == \
            ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]
        for q, values in transformed["quantiles"].items():
            assert len(served["quantiles"][q]) == requests["state"].prediction_length
            np.testing.assert_allclose(served["quantiles"][q], values, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(served["mean"], transformed["mean"], rtol=1e-6, atol=1e-9)


def test_json_lines_request_gets_batch_transforms_lines(server, requests):
    status, kind, body = call(server["port"], "POST", "/invocations", requests["lines"], {"Content-Type": "application/jsonlines"})
    assert (status, kind) == (200, "application/jsonlines"), body
    served = [json.loads(line) for line in body.splitlines()]
    assert len(served) == len(requests["transformed"])
    for one, transformed in zip(served, requests["transformed"]):
        np.testing.assert_allclose(one["quantiles"]["0.9"], transformed["quantiles"]["0.9"], rtol=1e-6, atol=1e-9)


def test_malformed_requests_get_4xx_with_a_reason(server, requests):
    port, instance = server["port"], requests["instances"][0]
    status, kind, body = call(port, "POST", "/invocations", b'{"instances": [', {"Content-Type": "application/json"})
    assert (status, kind.split(";")[0]) == (400, "text/plain") and b"not valid JSON" in body
    wrong_cat = {**instance, "cat": ["store-1"]}  # DeepAR's cat: non-negative integers
    status, _, body = call(port, "POST", "/invocations", json.dumps({"instances": [wrong_cat]}), {"Content-Type": "application/json"})
    assert status == 400 and b'instances[0]: "cat" is ["store-1"]' in body, body
    no_start = {k: v for k, v in instance.items() if k != "start"}
    status, _, body = call(port, "POST", "/invocations", json.dumps({"instances": [instance, no_start]}), {"Content-Type": "application/json"})
    assert status == 400 and b"instances[1]: the record has no 'start' field" in body, body
    status, _, body = call(port, "POST", "/invocations", json.dumps({"instances": [instance], "configuration": {"num_samples": -1}}),
                           {"Content-Type": "application/json"})
    assert status == 400 and b"num_samples" in body, body
    status, _, body = call(port, "POST", "/invocations", b"item,target\na,1\n", {"Content-Type": "text/csv"})
    assert status == 415 and b"DeepAR takes application/json or application/jsonlines" in body, body
    assert call(port, "GET", "/invocations")[0] == 405
    assert call(port, "GET", "/ping")[0] == 200  # still serving


def test_predict_writes_the_forecast_reports_rows(server, requests, workspace, tmp_path):
    from mlops.data.features import read_forecasts
    out = tmp_path / "forecasts.csv"
    result = run_mlops("predict", "--endpoint", f"http://127.0.0.1:{server['port']}", "--data", workspace["root"] / "future.csv",
                       "--model", VERSION, "--out", out, "--batch-size", "4", env=workspace["env"])
    assert result.returncode == 0, result.stderr
    expected = read_forecasts(requests["output"].parent, requests["folder"] / "index", requests["state"].freq)
    written = pd.read_csv(out, dtype={"item_id": str}, parse_dates=["timestamp"])
    assert list(written.columns) == list(expected.columns)
    assert written["item_id"].tolist() == expected["item_id"].tolist()
    assert (written["timestamp"] == expected["timestamp"]).all()
    # two requests of 4 and 2 instances: each batch is seeded on its own, so the draws differ from the single transform;
    # 100 sample paths give quantiles within a sampling tolerance (a few predictive spreads for the tails is far looser
    # than needed; a mean within the 0.1-0.9 band of the other run, every step, is the check)
    inside = (written["mean"] >= expected["0.1"]) & (written["mean"] <= expected["0.9"])
    assert inside.mean() > 0.9, written.assign(expected_mean=expected["mean"])


def test_ctrl_c_stops_the_server_and_leaves_no_process(server):
    process = server["process"]
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    assert process.returncode == 0, (server["logs"] / "stderr").read_text()
    stdout = (server["logs"] / "stdout").read_text()
    assert f"serving on http://127.0.0.1:{server['port']}" in stdout and "stopped" in stdout, stdout
    left = left_after(server["marker"])
    assert not left, command_lines(left)
    with pytest.raises(OSError):
        call(server["port"], "GET", "/ping")


def test_sigterm_stops_the_server_even_while_it_loads(workspace, tmp_path):
    "SIGTERM (what `docker stop` and SageMaker send a container) ends `mlops serve` as Ctrl+C does, at once, the model loaded or not."
    port, marker = free_port(), uuid.uuid4().hex
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        process = subprocess.Popen([*MLOPS, "serve", VERSION, "--port", str(port)], cwd=workspace["root"], stdout=out, stderr=err,
                                   env={**os.environ, **workspace["env"], MARKER: marker})
    deadline = time.monotonic() + 60
    while True:  # bound: /ping answers (503 while the model loads, then 200)
        assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr").read_text()
        try:
            if call(port, "GET", "/ping")[0] in (200, 503): break
        except OSError:
            time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    finally:
        if process.poll() is None: process.kill()
    assert process.returncode == 0, (tmp_path / "stderr").read_text()
    left = left_after(marker)
    assert not left, command_lines(left)
