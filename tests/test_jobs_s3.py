"""Payloads and results on S3 (a real SeaweedFS): multipart streaming, atomic visibility, a job end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shoal.errors import StoreError
from shoal.jobs.objects import PART_BYTES, Locations, S3Objects, s3_client
from tests.jobs_support import async_models, env_for, wait_for  # noqa: F401
from tests.server_fixtures import ServerProcess


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> str:
    client = s3_client(s3_endpoint, "us-east-1")
    client.create_bucket(Bucket="jobs")
    return "jobs"


def test_streamed_multipart_write_is_invisible_until_complete(s3_endpoint: str, bucket: str) -> None:
    objs = S3Objects(bucket, "unit", s3_client(s3_endpoint, "us-east-1"))
    data = os.urandom(PART_BYTES + 1234)
    w = objs.writer("payloads/big.bin")
    for i in range(0, len(data), 1 << 20):
        w.write(data[i:i + (1 << 20)])
    assert w.upload_id is not None, "past one part, the writer streams a multipart upload"
    assert objs.keys("payloads") == [], "nothing visible before commit"
    assert w.commit() == f"s3://{bucket}/unit/payloads/big.bin"
    assert objs.size("payloads/big.bin") == len(data) and objs.get("payloads/big.bin") == data

    aborted = objs.writer("payloads/aborted.bin")
    aborted.write(os.urandom(PART_BYTES + 10))
    aborted.abort()
    assert objs.keys("payloads") == ["payloads/big.bin"]
    objs.put("results/small.json", b"{}")
    assert objs.get("results/small.json") == b"{}"
    with pytest.raises(StoreError, match="larger than"):
        objs.get("results/small.json", limit=1)
    objs.delete("results/small.json")
    with pytest.raises(StoreError):
        objs.size("results/small.json")


def test_a_job_with_its_payload_and_result_in_s3(s3_endpoint: str, bucket: str, async_models: str,  # noqa: F811
                                                 tmp_path: Path) -> None:
    env = env_for(tmp_path, f"sqlite:///{tmp_path / 'jobs.sqlite'}", SHOAL_ASYNC_STORE=f"s3://{bucket}/e2e",
                  SHOAL_S3_ENDPOINT_URL=s3_endpoint)
    loc = Locations(f"s3://{bucket}/e2e", s3_endpoint)
    loc.root.put("inputs/ref.json", json.dumps({"text": "from a reference"}).encode())
    server = ServerProcess(["--store", async_models, "--models", "tiny-a"], env).start()
    try:
        with server.client() as c:
            inline = c.post("/async/predictions/tiny-a", json={"text": "inline payload"})
            ref = c.post("/async/predictions/tiny-a", json={"input_location": f"s3://{bucket}/e2e/inputs/ref.json"})
            missing = c.post("/async/predictions/tiny-a", json={"input_location": f"s3://{bucket}/e2e/inputs/no"})
            assert inline.status_code == ref.status_code == 202 and missing.status_code == 400, missing.text
            for r in (inline, ref):
                job = wait_for(lambda r=r: (b := c.get(f"/async/jobs/{r.json()['job_id']}").json())["state"]
                               == "succeeded" and b, 60, 0.1, "the S3 job")
                assert job["output_location"].startswith(f"s3://{bucket}/e2e/results/tiny-a/")
                result = json.loads(loc.read(job["output_location"]))
                assert result["job_id"] == job["job_id"] and "label" in result["prediction"]
        wait_for(lambda: loc.root.keys("payloads") == [], 10, 0.1, "the inline payload removed after its job")
        assert loc.root.keys("inputs") == ["inputs/ref.json"], "a referenced input is left alone"
    finally:
        server.stop()
