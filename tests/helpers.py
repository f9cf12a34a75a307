"""Helpers for tests: reading and damaging saved packages the way a broken disk or writer would; waiting for
processes the tests start."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import numpy as np

BLOB_SENTINEL = 0xDEADBEEF


def blob_entries(package: Path) -> list[tuple[int, int, int]]:
    """(metadata offset, data offset, size in bytes) of every weight in a package's weight.bin."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(package))
    weights = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    raw = weights.read_bytes()
    entries = set()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                for value in op.attributes.values():
                    if value.WhichOneof("value") == "blobFileValue":
                        meta = value.blobFileValue.offset
                        sentinel, _dtype, size, data = struct.unpack_from("<IIQQ", raw, meta)
                        assert sentinel == BLOB_SENTINEL
                        entries.add((meta, data, size))
    return sorted(entries)


def negate_largest_weight(package: Path) -> int:
    """Flip the sign of every float16 value of the package's largest weight; returns its size in bytes."""
    weights = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    _meta, data, size = max(blob_entries(package), key=lambda e: e[2])
    raw = bytearray(weights.read_bytes())
    values = np.frombuffer(bytes(raw[data:data + size]), dtype=np.uint16) ^ np.uint16(0x8000)
    raw[data:data + size] = values.tobytes()
    weights.write_bytes(bytes(raw))
    return size


def _model_file(package: Path) -> Path:
    return package / "Data" / "com.apple.CoreML" / "model.mlmodel"


def _main_operations(spec) -> list:
    block = next(iter(spec.mlProgram.functions["main"].block_specializations.values()))
    return list(block.operations)


def set_operation_input(package: Path, op_type: str, input_name: str, values: list[int]) -> str:
    """Give the first ``op_type`` operation's constant ``input_name`` new integer values; returns its name.

    Edits the saved program in place, the way a broken writer or a hand edit would.
    """
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString(_model_file(package).read_bytes())
    operations = _main_operations(spec)
    target = next(op for op in operations if op.type == op_type)
    argument = target.inputs[input_name].arguments[0].name
    const = next(op for op in operations if op.type == "const" and op.outputs[0].name == argument)
    tensor = const.attributes["val"].immediateValue.tensor
    del tensor.ints.values[:]
    tensor.ints.values.extend(values)
    _model_file(package).write_bytes(spec.SerializeToString())
    return target.outputs[0].name


def scale_constants(package: Path, op_types: tuple[str, ...], inputs: tuple[str, ...], factor: float,
                    limit: int | None = None) -> list[str]:
    """Multiply the float16 constants feeding ``inputs`` of ``op_types`` operations in weight.bin, in place.

    Returns the names of the constants changed (at most ``limit``).
    """
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString(_model_file(package).read_bytes())
    operations = _main_operations(spec)
    consts = {op.outputs[0].name: op for op in operations if op.type == "const"}
    weights = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    raw = bytearray(weights.read_bytes())
    changed: list[str] = []
    for op in operations:
        if op.type not in op_types:
            continue
        for name in inputs:
            if name not in op.inputs or (limit is not None and len(changed) >= limit):
                continue
            const = consts.get(op.inputs[name].arguments[0].name)
            value = const.attributes["val"] if const is not None else None
            if value is None or value.WhichOneof("value") != "blobFileValue" or const.outputs[0].name in changed:
                continue
            _sentinel, _dtype, size, data = struct.unpack_from("<IIQQ", raw, value.blobFileValue.offset)
            values = np.frombuffer(bytes(raw[data:data + size]), dtype=np.float16) * np.float16(factor)
            raw[data:data + size] = values.astype(np.float16).tobytes()
            changed.append(const.outputs[0].name)
    weights.write_bytes(bytes(raw))
    return changed


def wait_for(predicate, timeout: float, what: str, logs: tuple[Path, ...] = ()):
    """``predicate()``'s first true value, polled every half second; fails after ``timeout`` seconds, with the
    ends of ``logs``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    tails = "".join(f"\n--- {log.parent.name}/{log.name}\n{log.read_text(errors='replace')[-3000:]}"
                    for log in logs if log.exists())
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{tails}")


def free_port() -> int:
    """A TCP port nobody listens on (yet) on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_processes(processes) -> None:
    """SIGTERM each live process group the tests started, then SIGKILL those that do not end in 20 s."""
    import os
    import signal
    import subprocess

    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def tiny_source(hub: str, repo_id: str, folder: Path, *, seed: int):
    """Build a tiny SD2 pipeline in ``folder`` and push it to ``repo_id`` on the dev Hub as alice; returns the
    client."""
    from huggingface_hub import HfApi

    from workers.devtools.tiny import build_tiny_pipeline

    api = HfApi(endpoint=hub, token="alice-token")
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=str(build_tiny_pipeline(folder, style="sd2", seed=seed)))
    return api


def service_env(hub: str, database_url: str, broker_url: str, root: Path) -> dict[str, str]:
    """The environment of the service's processes in process tests: one dev Hub, database, broker and store."""
    return {"HF_ENDPOINT": hub, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "alice-token",
            "COREML_PUBLISH_DATABASE_URL": database_url, "COREML_PUBLISH_BROKER_URL": broker_url,
            "COREML_PUBLISH_ARTIFACT_STORE": str(root / "artifacts"), "COREML_PUBLISH_DEFAULT_NAMESPACE": "studio",
            "COREML_PUBLISH_SCRATCH": str(root / "scratch"), "COREML_PUBLISH_HEARTBEAT_INTERVAL": "1"}


def start_worker(env: dict[str, str], log: Path, *args: str):
    """A `coreml-publish worker` in its own process group, logging to ``log``, once it is ready."""
    import os
    import subprocess

    process = subprocess.Popen(["coreml-publish", "worker", *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True, env={**os.environ, **env})
    wait_for(lambda: "ready." in log.read_text(errors="replace"), 90, "the worker", (log,))
    return process


def start_stage(session, result, *, runner: str = "test") -> None:
    """Put a stage in the running state as a runner taking it would (``service.jobs.claim_stage``)."""
    from service.jobs import claim_stage

    assert claim_stage(session, result, runner=runner, timeout=180.0)


def resolved_source(repo_id: str, sha: str):
    """What resolving ``repo_id`` gives, without asking a Hub: a Source pinned at ``sha`` (for tests of the job
    service that never fetch it)."""
    from workers.source.source import Source

    return Source(id=repo_id, pipeline_class="StableDiffusionPipeline", model_index={}, components=(),
                  weight_files={}, weight_variant={}, repo_id=repo_id, revision="main", sha=sha, files={})
