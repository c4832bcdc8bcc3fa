"""Shared fixtures: a real S3/SageMaker HTTP endpoint (moto server) on 127.0.0.1, small-thread torch."""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SAGEMAKER_VALIDATE_ROLE", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REGION = "us-east-2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def aws_endpoint():
    """A moto server on 127.0.0.1 speaking the S3 and SageMaker HTTP APIs; AWS_* env points at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN")}
    os.environ.update({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION})
    os.environ.pop("AWS_SESSION_TOKEN", None)
    yield url
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(aws_endpoint):
    """A fresh bucket in us-east-2 on the moto server; yields its name."""
    import boto3

    name = f"cardlib-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    return name


@pytest.fixture(autouse=True)
def _one_thread():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def cardlib_kernel():
    """The `cardlib` Jupyter kernel of this environment (make setup registers it; register if missing)."""
    import subprocess
    import sys

    from jupyter_client.kernelspec import KernelSpecManager

    if "cardlib" not in KernelSpecManager().find_kernel_specs():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", "cardlib"],
                       check=True, capture_output=True)
    return "cardlib"


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Downloaded weights, bundles and remote-store MLflow files go to a temp cache, not the user's."""
    old = os.environ.get("CARDLIB_CACHE_DIR")
    os.environ["CARDLIB_CACHE_DIR"] = str(tmp_path_factory.mktemp("cardlib-cache"))
    yield
    if old is None:
        os.environ.pop("CARDLIB_CACHE_DIR", None)
    else:
        os.environ["CARDLIB_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def chromium():
    """Debian's headless Chromium; installed with apt-get when missing (as the CI machine runs as root)."""
    import shutil
    import subprocess

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, capture_output=True, env=env,
                       timeout=900)
        path = shutil.which("chromium")
    if path is None:
        pytest.fail("Chromium is needed to check the rendered report and could not be installed")
    return path
