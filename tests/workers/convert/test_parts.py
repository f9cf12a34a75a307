"""A conversion in parts, in processes of their own (``workers.convert.parts``): the same packages as one process,
scheduled within the memory, and a part that fails or dies named."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from workers.convert import parts
from workers.convert.engine import convert_pipeline
from workers.convert.geometry import read_geometry
from workers.convert.run import Run
from workers.errors import ConversionError, SourceError
from workers.memory import HostLedger
from workers.names import Attention
from workers.options import ConvertOptions
from workers.package.files import fingerprints
from workers.source.resolve import resolve_source

GiB = 1 << 30


@pytest.fixture(autouse=True)
def own_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Conversions in this process claim memory in a ledger of their own, not the host's."""
    monkeypatch.setattr(parts, "HostLedger", lambda: HostLedger(tmp_path / "ledger.json"))


def _digests(out: Path, components: tuple[str, ...]) -> dict[str, str]:
    """The programs and weight files of the packages of ``components`` (the UNet's: not the ControlledUnet's)."""
    names = tuple(f"_{c}.mlpackage" for c in components)
    return {path: found for path, found in fingerprints(out).items() if any(p.endswith(names) for p in path.split("/"))}


def test_parts_in_processes_make_the_packages_one_process_makes(sd1_pipeline: Path, sd1_conversion,
                                                               tmp_path: Path) -> None:
    serial_out, serial = sd1_conversion
    components = ("text_encoder", "unet")
    events = []
    out = tmp_path / "out"
    report = convert_pipeline(resolve_source(str(sd1_pipeline), source_id="tests/tiny-sd1"), out,
                              ConvertOptions(components=components), on_event=events.append, processes=2)
    found = _digests(out, components)
    assert len(found) == 16  # 2 components x 2 layouts x 2 repos: each package's program and weights
    assert found == _digests(serial_out, components)  # byte for byte
    # the UNet split by layout, each part in its own process, its peak recorded
    assert set(report.peaks) == {"unet-original", "unet-split_einsum_v2", "text_encoder"}
    assert all(peak > 100 << 20 for peak in report.peaks.values())
    assert {(p.path, p.status) for p in report.packages} == \
        {(p.path, p.status) for p in serial.packages if p.component in components}
    assert not (out / parts.PARTS_DIR).exists()
    done = [e.progress for e in events if e.status == "done" and e.progress is not None]
    assert done[-1].fraction == 1.0 and all(a.done <= b.done for a, b in zip(done, done[1:]))


def test_layouts_are_split_only_when_two_fit_in_memory(sd1_pipeline: Path, tmp_path: Path) -> None:
    source = resolve_source(str(sd1_pipeline))
    options = ConvertOptions(controlled_unet=True)
    run = Run(source, tmp_path, options, read_geometry(sd1_pipeline), None)
    components = ["text_encoder", "unet", "controlled_unet", "vae_decoder"]
    split = parts.plan_parts(run, components, processes=2, budget=100 * GiB)
    assert {p.name for p in split} == {"text_encoder", "vae_decoder", "unet-original", "unet-split_einsum_v2",
                                       "controlled_unet-original", "controlled_unet-split_einsum_v2"}
    assert split[0].components[0] in ("unet", "controlled_unet")  # the costliest first
    unet = next(p for p in split if p.name == "unet-original")
    for tight in (unet.memory, 2 * unet.memory - 1):  # two UNets do not fit: each converts both layouts itself
        whole = parts.plan_parts(run, components, processes=2, budget=tight)
        assert [p.attentions for p in whole if p.name == "unet"] == [(Attention.ORIGINAL, Attention.SPLIT_EINSUM_V2)]
    assert {p.name for p in parts.plan_parts(run, components, processes=1, budget=100 * GiB)} == set(components)
    mixed = Run(source, tmp_path, ConvertOptions(controlled_unet=True, bits="mixed:4.5"), run.geometry, None)
    # a mixed-bit recipe is analysed once per component: its layouts stay in one part
    assert {p.name for p in parts.plan_parts(mixed, components, processes=2, budget=100 * GiB)} == set(components)


def test_parts_start_only_while_their_estimates_fit(tmp_path: Path) -> None:
    def part(name: str, gib: int) -> parts.Part:
        return parts.Part(name, (name,), (Attention.ORIGINAL,), gib * GiB, float(gib))

    def startable(pending: list[parts.Part], available: int, processes: int = 2, running: int = 0,
                  ledger: HostLedger | None = None) -> list[parts.Part]:
        ledger = ledger or HostLedger(tmp_path / f"ledger-{len(list(tmp_path.iterdir()))}.json")
        return parts._startable(pending, running, processes,
                                lambda p, alone: ledger.claim(p.name, p.memory, available * GiB, alone=alone))

    big, medium, small = part("unet", 8), part("vae_decoder", 5), part("text_encoder", 2)
    assert startable([big, medium, small], 14) == [big, medium]
    assert startable([big, medium, small], 12) == [big, small]  # the next that fits
    assert startable([big, medium, small], 15, processes=3) == [big, medium, small]
    assert startable([big], 4) == [big]  # alone, whatever its estimate
    held = HostLedger(tmp_path / "held.json")  # another conversion on the host holds a claim
    assert held.claim("other", 8 * GiB, 20 * GiB)
    assert startable([big, medium], 12, ledger=held) == []  # 12 GiB free, 8 of them the other's to grow into
    assert startable([medium, small], 14, ledger=held) == [medium]


def test_estimates_grow_with_the_weights_and_the_image(sd1_pipeline: Path) -> None:
    source = resolve_source(str(sd1_pipeline))
    g = read_geometry(sd1_pipeline)
    weights = {c: parts.float32_weight_bytes(source, c) for c in ("unet", "text_encoder", "vae")}
    unet = parts.part_memory("unet", g, weights["unet"])
    text = parts.part_memory("text_encoder", g, weights["text_encoder"])
    assert text >= parts.BASE_BYTES and unet > text
    assert weights["unet"] > weights["text_encoder"] > 0
    larger = g.at_size((g.image_width * 2, g.image_height * 2))
    assert parts.part_memory("vae_decoder", larger, weights["vae"]) > parts.part_memory("vae_decoder", g, weights["vae"])
    assert parts.part_memory("unet", larger, weights["unet"]) > unet


def test_small_sources_convert_in_this_process_unless_told(sd1_pipeline: Path) -> None:
    source = resolve_source(str(sd1_pipeline))
    assert parts.choose_processes(None, source) == 1  # a few MB of weights: starting processes costs more
    assert parts.choose_processes(3, source) == 3 and parts.choose_processes(1, source) == 1


def test_an_error_in_a_part_is_raised_as_the_part_raised_it(sd1_pipeline: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(sd1_pipeline, folder)
    source = resolve_source(str(folder), source_id="tests/broken")
    for file in (folder / "vae").glob("*.safetensors"):  # damaged after the source was checked: found loading
        data = file.read_bytes()
        header = 8 + int.from_bytes(data[:8], "little")
        file.write_bytes(data[:header] + b"\xff" * (len(data) - header))  # every value NaN
    out = tmp_path / "out"
    with pytest.raises(SourceError, match="NaN or infinite values") as found:  # the part's own error, its facts kept
        convert_pipeline(source, out, ConvertOptions(components=("text_encoder", "vae_decoder"), bits=None),
                         processes=2)
    assert found.value.source and found.value.hint
    assert not (out / parts.PARTS_DIR).exists()  # the other part stopped, nothing of either left behind


def _parts_running(pid: int) -> list[int]:
    """The part processes under ``pid`` that run this project's part module (past their fork)."""
    found = []
    for child in _descendants(pid):
        try:
            if parts.PART_PROCESS.encode() in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue  # ended meanwhile
    return found


def test_a_part_whose_process_dies_is_named(sd1_pipeline: Path, tmp_path: Path) -> None:
    source = resolve_source(str(sd1_pipeline), source_id="tests/tiny-sd1")
    outcome: list[BaseException] = []

    def convert() -> None:
        try:
            convert_pipeline(source, tmp_path / "out", ConvertOptions(components=("vae_decoder",), bits=None),
                             processes=2)
        except BaseException as e:  # noqa: BLE001 - the test reads it
            outcome.append(e)

    thread = threading.Thread(target=convert)
    thread.start()
    deadline = time.monotonic() + 60
    while not _parts_running(os.getpid()) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(_parts_running(os.getpid())[0], signal.SIGKILL)  # as the kernel's out-of-memory killer would
    thread.join(120)
    assert len(outcome) == 1 and isinstance(outcome[0], ConversionError)
    assert "the process converting vae_decoder was killed by signal 9" in str(outcome[0])
    assert "--processes 1" in outcome[0].hint


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def test_parts_end_when_the_conversion_that_started_them_is_killed(sd1_pipeline: Path, tmp_path: Path) -> None:
    script = ("import sys; from pathlib import Path; from workers.convert.engine import convert_pipeline; "
              "from workers.options import ConvertOptions; from workers.source.resolve import resolve_source; "
              "convert_pipeline(resolve_source(sys.argv[1]), Path(sys.argv[2]), "
              "ConvertOptions(components=('vae_decoder', 'vae_encoder'), bits=None), processes=2)")
    parent = subprocess.Popen([sys.executable, "-c", script, str(sd1_pipeline), str(tmp_path / "out")])
    deadline = time.monotonic() + 60
    while len(_parts_running(parent.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    started = _parts_running(parent.pid)
    assert len(started) == 2
    time.sleep(1.0)
    parent.kill()  # a worker killed at its time limit: nothing of it runs its clean-up
    parent.wait()
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(pid) for pid in started)  # each saw its parent go and ended


def _running(pid: int) -> bool:
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                     if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return "Z" not in state  # a zombie has ended
