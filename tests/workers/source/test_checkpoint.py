"""Single-file checkpoints as sources: recognised from their tensors, unpacked by diffusers' own loader into the
very tensors of the pipeline they were written from, refused in one line when they cannot be converted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from workers.devtools.checkpoint import write_checkpoint
from workers.devtools.tiny import build_tiny_pipeline
from workers.errors import OptionsError, SourceError, UnsafeWeightsError, UnsupportedModelError
from workers.source.checkpoint import ARCHITECTURES, CONFIGS, check_configs_fit, recognise
from workers.source.fetch import fetched
from workers.source.resolve import resolve_source
from workers.source.unpack import shipped_configs

STYLES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline",
          "sdxl": "StableDiffusionXLPipeline", "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline"}


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    found = {}
    for file in sorted(folder.glob("*/*.safetensors")):
        found.update({f"{file.parent.name}/{k}": v for k, v in load_file(str(file)).items()})
    return found


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {style: build_tiny_pipeline(root / style, style=style, safety_checker=False) for style in STYLES}


@pytest.mark.parametrize("style", sorted(STYLES))
def test_a_checkpoint_unpacks_into_the_tensors_it_was_written_from(style: str, pipelines, tmp_path: Path) -> None:
    import torch

    pipeline = pipelines[style]
    file = write_checkpoint(pipeline, tmp_path / "fine-tune.safetensors")
    source = resolve_source(str(file), config=str(pipeline))
    assert (source.architecture, source.pipeline_class, source.checkpoint) == (style, STYLES[style],
                                                                               "fine-tune.safetensors")
    assert len(source.checkpoint_sha256) == 64 and source.provenance()["checkpoint"]["file"] == "fine-tune.safetensors"
    with fetched(source) as unpacked:
        assert unpacked.origin == tmp_path and unpacked.unpacked is not None
        ours, theirs = _tensors(unpacked.path), _tensors(pipeline)
        assert set(ours) == set(theirs)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "a tensor changed on the way"
        assert set(unpacked.components) >= {"unet", "vae"}
        folder = unpacked.unpacked
    assert not folder.exists()  # released with the block


def test_a_float16_checkpoint_stays_float16_bit_for_bit(pipelines, tmp_path: Path) -> None:
    import torch

    file = write_checkpoint(pipelines["sd1"], tmp_path / "half.safetensors", half=True)
    with fetched(resolve_source(str(file), config=str(pipelines["sd1"]))) as unpacked:
        ours, theirs = _tensors(unpacked.path), _tensors(pipelines["sd1"])
    assert all(v.dtype == torch.float16 for v in ours.values())
    assert all(torch.equal(ours[k], theirs[k].half()) for k in theirs)


def test_several_checkpoints_need_a_choice(pipelines, tmp_path: Path) -> None:
    folder = tmp_path / "repo"
    write_checkpoint(pipelines["sd1"], folder / "a.safetensors")
    shutil.copy(folder / "a.safetensors", folder / "b.safetensors")
    with pytest.raises(OptionsError, match=r"several single-file checkpoints \(a.safetensors, b.safetensors\)"):
        resolve_source(str(folder), config=str(pipelines["sd1"]))
    assert resolve_source(str(folder), checkpoint="b.safetensors", config=str(pipelines["sd1"])).checkpoint == \
        "b.safetensors"
    with pytest.raises(SourceError, match="no file 'c.safetensors'.*a.safetensors, b.safetensors"):
        resolve_source(str(folder), checkpoint="c.safetensors")


def test_what_is_not_a_text_to_image_checkpoint_is_refused_in_one_line(pipelines, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    def refused(tensors: dict, match: str, error=UnsupportedModelError) -> None:
        file = tmp_path / "x.safetensors"
        save_file(tensors, str(file))
        with pytest.raises(error, match=match) as caught:
            resolve_source(str(file))
        assert "\n" not in caught.value.one_line()

    refused({"foo.weight": torch.zeros(2)}, "not a Stable Diffusion checkpoint: none of its 1 tensors")
    refused({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2)}, "a LoRA")
    refused({"control_model.time_embed.0.weight": torch.zeros(2)}, "a ControlNet")
    unet = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 9, 3, 3),
            "first_stage_model.encoder.conv_in.weight": torch.zeros(2)}
    refused(unet, "an inpainting checkpoint")
    unet["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(8, 4, 3, 3)
    refused(unet, "no text encoder of SD 1.x, SD 2.x or SDXL")
    # the shipped configs are the canonical model's: a tiny checkpoint does not fit them
    write_checkpoint(pipelines["sd1"], tmp_path / "tiny.safetensors")
    with pytest.raises(UnsupportedModelError, match="tiny.safetensors does not fit the configs of stable-diffusion-"
                                                    "v1-5/stable-diffusion-v1-5 .shipped.: the UNet's first block "
                                                    "width is 32, the configs say 320") as caught:
        resolve_source(str(tmp_path / "tiny.safetensors"))
    assert "Pass --config" in caught.value.one_line()
    with pytest.raises(UnsupportedModelError, match="SD 1.x checkpoint, and --config .* StableDiffusionXLPipeline"):
        resolve_source(str(tmp_path / "tiny.safetensors"), config=str(pipelines["sdxl"]))
    with pytest.raises(OptionsError, match="--config is for single-file checkpoints"):
        resolve_source(str(pipelines["sd1"]), config=str(pipelines["sd2"]))
    pickle = tmp_path / "p" / "model.ckpt"
    pickle.parent.mkdir()
    pickle.write_bytes(b"not really")
    with pytest.raises(UnsafeWeightsError, match="pickle checkpoint"):
        resolve_source(str(pickle.parent))


def test_full_size_tensors_fit_the_shipped_configs() -> None:
    """SD 1.5's and SDXL's real widths (names and shapes as their checkpoints carry them) fit what is shipped, and
    the other architecture's do not."""
    sd15 = {"model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, 768],
            "first_stage_model.encoder.conv_in.weight": [128, 3, 3, 3],
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [49408, 768]}
    assert recognise(sd15, source="x", file="f").key == "sd1"
    unet = json.loads((CONFIGS / "sd15" / "unet" / "config.json").read_text())
    text = json.loads((CONFIGS / "sd15" / "text_encoder" / "config.json").read_text())
    check_configs_fit(sd15, unet, text, source="x", configs="sd15")
    xl = json.loads((CONFIGS / "sdxl-base" / "unet" / "config.json").read_text())
    with pytest.raises(UnsupportedModelError, match="cross-attention width is 768, the configs say 2048"):
        check_configs_fit(sd15, xl, None, source="x", configs="sdxl-base")


@pytest.mark.parametrize("key", sorted(ARCHITECTURES))
def test_shipped_configs_are_the_canonical_models(key: str, tmp_path: Path) -> None:
    """Each shipped folder reads as its pipeline (configs and CLIP tokenizers: "a photo of a cat" gives CLIP's ids)."""
    import diffusers
    from transformers import CLIPTokenizer

    architecture = ARCHITECTURES[key]
    folder = shipped_configs(architecture.configs, tmp_path / "configs")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == architecture.pipeline_class
    unet = diffusers.UNet2DConditionModel.load_config(folder / "unet")
    assert unet["in_channels"] == 4 and unet["sample_size"] == {"sd1": 64, "sd2": 96}.get(key, 128)
    for tokenizer in ("tokenizer", "tokenizer_2"):
        if (folder / tokenizer).is_dir():
            ids = CLIPTokenizer.from_pretrained(folder / tokenizer)("a photo of a cat").input_ids
            assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_a_hub_checkpoint_is_recognised_from_its_header_and_pinned(pipelines, devhub, tmp_path: Path) -> None:
    """Through the dev Hub: the architecture from two range requests, the sha256 from the LFS pointer, --config
    pinned as a repo; the fetch downloads the checkpoint and the config's JSON and tokenizer files only."""
    import torch
    from huggingface_hub import HfApi

    url, _ = devhub
    api = HfApi(endpoint=url, token="alice-token")
    repo = tmp_path / "repo"
    write_checkpoint(pipelines["sdxl"], repo / "model.safetensors")
    (repo / "README.md").write_text("---\nlicense: openrail++\n---\n# An SDXL fine-tune\n")
    for name, folder in (("studio/xl-fine-tune", repo), ("studio/tiny-xl", pipelines["sdxl"])):
        api.create_repo(name)
        api.upload_folder(repo_id=name, folder_path=str(folder))
    source = resolve_source("studio/xl-fine-tune", config="studio/tiny-xl", endpoint=url, token="alice-token")
    from workers.source.weights import sha256_of

    assert source.architecture == "sdxl" and source.checkpoint_sha256 == sha256_of(repo / "model.safetensors")
    assert dict(source.extras)["config"].sha == api.model_info("studio/tiny-xl").sha
    assert set(source.files) == {"model.safetensors", "README.md"}
    with fetched(source, cache_dir=tmp_path / "cache", endpoint=url, token="alice-token") as unpacked:
        ours, theirs = _tensors(unpacked.path), _tensors(pipelines["sdxl"])
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs) and set(ours) == set(theirs)
        assert unpacked.license == "openrail++"


@pytest.mark.parametrize(("key", "size"), [("sd1", 512), ("sd2", 768), ("sdxl", 1024)])
def test_a_checkpoint_with_shipped_configs_takes_their_sizes_before_it_is_fetched(key: str, size: int) -> None:
    """What a job's submit checks --resolution against: the shipped configs' native size."""
    from workers.convert.geometry import native_image
    from workers.source.checkpoint import configs_of
    from workers.source.controlnet import BASE_FILES, read_configs
    from workers.source.source import Source

    architecture = ARCHITECTURES[key]
    source = Source(id="org/x", repo_id="org/x", sha="0" * 40, pipeline_class=architecture.pipeline_class,
                    model_index={}, components=architecture.components, weight_files={"checkpoint": ("m.safetensors",)},
                    weight_variant={"checkpoint": None}, checkpoint="m.safetensors", architecture=key,
                    configs=architecture.configs)
    unet, vae = read_configs(configs_of(source), BASE_FILES, token=None, endpoint=None)
    assert native_image(unet, vae, source="org/x")[0] == (size, size)


def test_a_published_checkpoint_tree_finds_its_tokenizer_in_the_configs_it_was_unpacked_with(tmp_path: Path) -> None:
    from workers.source.unpack import recorded_tokenizers

    folder = recorded_tokenizers({"checkpoint": {"architecture": "sdxl"}}, tmp_path / "configs")
    assert (folder / "tokenizer" / "vocab.json").read_bytes() == (CONFIGS / "clip" / "vocab.json").read_bytes()
    assert (folder / "tokenizer_2" / "merges.txt").is_file()
    given = tmp_path / "given"
    given.mkdir()
    assert recorded_tokenizers({"checkpoint": {"architecture": "sd1"}, "config": {"path": str(given)}},
                               tmp_path / "other") == given
