"""LoRAs: resolved and pinned like --vae, refused in one line when they are not LoRAs or fit nothing, fused by
diffusers into exactly W + scale·B·A in both formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.devtools.lora import lora_layers, write_lora
from workers.devtools.tiny import build_tiny_pipeline
from workers.errors import OptionsError, SourceError, UnsupportedModelError
from workers.options import JobOptions, SourceOptions
from workers.source.fetch import fetched
from workers.source.lora import parse_lora
from workers.source.resolve import resolve_source


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora-bases")
    return {style: build_tiny_pipeline(root / style, style=style, safety_checker=False) for style in ("sd1", "sdxl")}


def _weights(folder: Path, component: str) -> dict:
    from safetensors.torch import load_file

    found = {}
    for file in sorted((folder / component).glob("*.safetensors")):
        found.update(load_file(str(file)))
    return found


@pytest.mark.parametrize("kind", ["diffusers", "kohya"])
def test_a_lora_is_fused_at_its_scale_into_the_unet_and_the_text_encoder(kind: str, pipelines, tmp_path: Path) -> None:
    import torch

    base = pipelines["sd1"]
    file = write_lora(base, tmp_path / "style" / "lora.safetensors", kind=kind)
    layers = lora_layers(base)
    with fetched(resolve_source(str(base), loras=(f"{file}:0.5",))) as fused:
        for component, weights in (("unet", "unet"), ("text_encoder", "text_encoder")):
            ours, theirs = _weights(fused.path, weights), _weights(base, weights)
            for name, (a, b) in layers[component].items():
                assert torch.allclose(ours[name + ".weight"], theirs[name + ".weight"] + 0.5 * b @ a, atol=1e-6)
            untouched = [k for k in theirs if not any(k.startswith(n + ".") for n in layers[component])]
            assert untouched and all(torch.equal(ours[k], theirs[k]) for k in untouched)
        assert fused.unpacked is not None and fused.unpacked.exists()
        lora = dict(fused.extras)["lora0"]
        assert lora.provenance()["scale"] == 0.5
    assert not fused.unpacked.exists()


def test_an_sdxl_lora_in_the_kohya_format_reaches_both_text_encoders_names(pipelines, tmp_path: Path) -> None:
    import torch

    base = pipelines["sdxl"]
    file = write_lora(base, tmp_path / "xl.safetensors", kind="kohya")
    layers = lora_layers(base)
    with fetched(resolve_source(str(base), loras=(str(file),))) as fused:
        ours, theirs = _weights(fused.path, "text_encoder"), _weights(base, "text_encoder")
        name, (a, b) = next(iter(layers["text_encoder"].items()))
        assert torch.allclose(ours[name + ".weight"], theirs[name + ".weight"] + b @ a, atol=1e-6)


def test_what_is_not_a_lora_or_fits_nothing_is_refused_naming_it(pipelines, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    base = pipelines["sd1"]
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "junk.safetensors"))
    with pytest.raises(UnsupportedModelError, match="junk.safetensors is not a LoRA: its tensor 'foo.weight'"):
        resolve_source(str(base), loras=(str(tmp_path / "junk.safetensors"),))
    stray = {"unet.no_such_block.to_q.lora_A.weight": torch.zeros(4, 8),
             "unet.no_such_block.to_q.lora_B.weight": torch.zeros(8, 4)}
    save_file(stray, str(tmp_path / "stray.safetensors"))
    source = resolve_source(str(base), loras=(str(tmp_path / "stray.safetensors"),))
    with pytest.raises(UnsupportedModelError, match="stray.safetensors (matches no layer|does not fit)") as caught:
        with fetched(source):
            pass
    assert "\n" not in caught.value.one_line()
    xl_lora = write_lora(pipelines["sdxl"], tmp_path / "xl.safetensors")
    with pytest.raises(UnsupportedModelError, match="xl.safetensors does not fit"):
        with fetched(resolve_source(str(base), loras=(str(xl_lora),))):
            pass
    with pytest.raises(SourceError, match="neither a local file or folder nor a Hub repo"):
        resolve_source(str(base), loras=("./missing.safetensors",))


def test_lora_options_are_normalised_and_checked() -> None:
    assert parse_lora("org/style:0.8") == ("org/style", 0.8) and parse_lora("org/style") == ("org/style", 1.0)
    assert SourceOptions.from_user(loras=["org/a", "org/b/x.safetensors:0.50"]).loras == \
        ("org/a:1", "org/b/x.safetensors:0.5")
    for bad, match in (("org/a:abc", "not a number"), ("org/a:20", "between -10 and 10"),
                       ("org/a:nan", "between -10 and 10")):
        with pytest.raises(OptionsError, match=match):
            SourceOptions.from_user(loras=[bad])
    with pytest.raises(OptionsError, match="at most 8"):
        SourceOptions.from_user(loras=[f"org/l{i}" for i in range(9)])
    with pytest.raises(OptionsError, match="not a Hub repo"):
        JobOptions.from_user(namespace="me", loras=["./local.safetensors"])
    with pytest.raises(OptionsError, match="--base makes this a ControlNet one"):
        JobOptions.from_user(namespace="me", loras=["org/a"], base="org/sd")
    pinned = JobOptions.from_user(namespace="me", loras=["org/a", "org/b"]).pinned({"lora0": "a" * 40,
                                                                                     "lora1": "b" * 40})
    assert pinned.lora_shas == ("a" * 40, "b" * 40)
    assert JobOptions.from_dict(json.loads(json.dumps(pinned.to_dict()))) == pinned


def test_a_hub_lora_is_pinned_and_only_its_file_fetched(pipelines, devhub, tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    url, _ = devhub
    api = HfApi(endpoint=url, token="alice-token")
    repo = tmp_path / "lora-repo"
    write_lora(pipelines["sd1"], repo / "pytorch_lora_weights.safetensors")
    write_lora(pipelines["sd1"], repo / "older" / "v1.safetensors", seed=1)
    (repo / "README.md").write_text("---\nlicense: mit\n---\n# A style\n")
    for name, folder in (("studio/style", repo), ("studio/tiny-sd", pipelines["sd1"])):
        api.create_repo(name)
        api.upload_folder(repo_id=name, folder_path=str(folder))
    source = resolve_source("studio/tiny-sd", loras=("studio/style:0.7",), endpoint=url, token="alice-token")
    lora = dict(source.extras)["lora0"]
    assert (lora.repo_id, lora.sha, lora.lora_scale) == ("studio/style", api.model_info("studio/style").sha, 0.7)
    assert set(lora.files) == {"pytorch_lora_weights.safetensors", "README.md"}
    other = resolve_source("studio/tiny-sd", loras=("studio/style/older/v1.safetensors",), endpoint=url,
                           token="alice-token")
    assert dict(other.extras)["lora0"].weight_files["lora"] == ("older/v1.safetensors",)
    with fetched(source, cache_dir=tmp_path / "cache", endpoint=url, token="alice-token") as fused:
        assert fused.provenance()["lora0"]["repo_id"] == "studio/style"


def test_several_loras_are_each_fused_at_their_own_scale(pipelines, tmp_path: Path) -> None:
    import torch

    base = pipelines["sd1"]
    first = write_lora(base, tmp_path / "a.safetensors", kind="kohya")
    second = write_lora(base, tmp_path / "b" / "pytorch_lora_weights.safetensors", seed=1)
    layers, others = lora_layers(base), lora_layers(base, seed=1)
    with fetched(resolve_source(str(base), loras=(f"{first}:0.8", f"{second.parent}:-0.3"))) as fused:
        ours, theirs = _weights(fused.path, "unet"), _weights(base, "unet")
    for name, (a, b) in layers["unet"].items():
        a1, b1 = others["unet"][name]
        expected = theirs[name + ".weight"] + 0.8 * b @ a - 0.3 * b1 @ a1
        assert torch.allclose(ours[name + ".weight"], expected, atol=1e-6), name
