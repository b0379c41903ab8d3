"""A real S3-compatible server for tests and benchmarks: moto in server mode on 127.0.0.1 (a random free port), started
by the test itself in its own session and killed with its whole process group. Authentication is on (after the
three requests that create its one user), so wrong credentials are refused as by S3."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["MotoS3", "start_moto"]

REGION = "us-east-1"


@dataclass
class MotoS3:
    """A running moto server and the credentials of its user."""

    url: str
    key: str
    secret: str
    process: subprocess.Popen

    def storage_options(self, **overrides: Any) -> dict[str, Any]:
        """fsspec (s3fs) options that reach this server with these credentials."""
        options = {"key": self.key, "secret": self.secret, "endpoint_url": self.url,
                   "client_kwargs": {"region_name": REGION}}  # fmt: skip
        options.update(overrides)
        return options

    def environment(self) -> dict[str, str]:
        """The same, as environment variables (for `grit-hf` in a subprocess)."""
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_ENDPOINT_URL": self.url,
                "AWS_DEFAULT_REGION": REGION}  # fmt: skip

    def client(self):
        """A boto3 S3 client with the user's credentials (to make buckets and to damage objects on purpose)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret)  # fmt: skip

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(timeout: float = 60) -> MotoS3:
    """Start the server, create its user (full access) and return it."""
    import boto3

    port = _free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                raise RuntimeError(f"moto did not start on {url}") from None
            time.sleep(0.1)
    try:
        iam = boto3.client("iam", endpoint_url=url, region_name=REGION, aws_access_key_id="setup",
                           aws_secret_access_key="setup")  # fmt: skip
        iam.create_user(UserName="grit")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="grit", PolicyName="all", PolicyDocument=json.dumps(policy))
        created = iam.create_access_key(UserName="grit")["AccessKey"]
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return MotoS3(url, created["AccessKeyId"], created["SecretAccessKey"], process)
