"""Bad sources fail early, with one line naming what is wrong: one parametrised test per kind of damage.

Each case goes through resolve (and fetch, or the spec loader, where that is where the damage shows) and,
where the damage passes resolve, through ``convert_pipeline``: the error class, the file or field in the
message, and no package left behind.  Nothing here converts a model.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from workers.errors import OptionsError, SourceError, UnsupportedModelError
from workers.convert.engine import convert_pipeline
from workers.options import ConvertOptions
from workers.source.fetch import fetch_source
from workers.convert.geometry import read_geometry
from workers.names import Attention
from workers.names import looks_like_repo_id
from workers.source.resolve import resolve_source
from workers.convert.specs import SPECS

UNET = "unet/diffusion_pytorch_model.safetensors"
TEXT = "text_encoder/model.safetensors"
VAE = "vae/diffusion_pytorch_model.safetensors"


@pytest.fixture
def source(sd1_pipeline: Path, tmp_path: Path) -> Path:
    """A private copy of the SD1 fixture to damage."""
    return Path(shutil.copytree(sd1_pipeline, tmp_path / "model"))


def _convert_nothing(resolved, out: Path, component: str) -> None:
    """Convert one component of a source damaged after resolving: must raise before any package exists."""
    options = ConvertOptions(components=(component,), bits=None, attentions=(Attention.ORIGINAL,), batch_size=1)
    try:
        convert_pipeline(resolved, out, options)
    finally:
        assert not list(out.rglob("*.mlpackage")) if out.exists() else True


def _edit_json(file: Path, **changes) -> None:
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


def _edit_weights(file: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


# --- 1. damaged safetensors files ------------------------------------------------------------------------

def _header_length(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


DAMAGE = {
    "truncated": (lambda d: d[: len(d) // 2], "truncated"),
    "header length past the end": (lambda d: struct.pack("<Q", 10**12) + d[8:], "runs past the end"),
    "header not JSON": (lambda d: d[:8] + b"\xff" * _header_length(d) + d[8 + _header_length(d):], "not JSON"),
    "empty": (lambda d: b"", "empty"),
    "unknown dtype": (lambda d: d.replace(b'"F32"', b'"Q32"', 1), "unknown dtype 'Q32'"),
}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("weights", [UNET, TEXT])
def test_damaged_safetensors_are_refused_naming_the_file(source: Path, tmp_path: Path, weights: str,
                                                         damage: str) -> None:
    resolved = resolve_source(str(source))
    edit, words = DAMAGE[damage]
    (source / weights).write_bytes(edit((source / weights).read_bytes()))
    with pytest.raises(SourceError, match=words) as caught:
        resolve_source(str(source))
    assert f"{weights} is not a valid safetensors file" in caught.value.message and caught.value.hint
    # a file damaged after resolving is named by the loader, before diffusers or transformers read it
    component = weights.split("/")[0]
    with pytest.raises(SourceError, match=words):
        _convert_nothing(resolved, tmp_path / "out", component)


@pytest.mark.parametrize("weight_map, words", [
    ({"conv_in.weight": "diffusion_pytorch_model-00002-of-00002.safetensors"}, "names a shard that is missing"),
    ({"conv_in.weight": "../../../etc/passwd"}, "names a shard outside its folder"),
    ("not a map", "has no weight_map"),
])
def test_broken_shard_indexes_are_refused_naming_them(source: Path, weight_map, words: str) -> None:
    index = source / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(SourceError, match=f"unet/{index.name} {words}"):
        resolve_source(str(source))


# --- 1b. weights that contradict the config ---------------------------------------------------------------

def _grow(key: str):
    def edit(tensors):
        tensors[key] = tensors[key].new_zeros((tensors[key].shape[0] + 1, *tensors[key].shape[1:]))
    return edit


def _drop(key: str):
    return lambda tensors: tensors.pop(key)


@pytest.mark.parametrize("spec, weights, edit, key, words", [
    ("text_encoder", TEXT, _grow, "embeddings.position_embedding.weight", r"is \[78, 32\] in the weights"),
    ("unet", UNET, _grow, "conv_in.weight", r"is \[33, 4, 3, 3\] in the weights"),
    ("vae_decoder", VAE, _drop, "decoder.conv_in.weight", "the weights lack"),
    ("text_encoder", TEXT, _drop, "encoder.layers.0.mlp.fc1.weight", "the weights lack"),
])
def test_weights_contradicting_the_config_are_refused_naming_component_and_tensor(
        source: Path, tmp_path: Path, spec: str, weights: str, edit, key: str, words: str) -> None:
    resolved = resolve_source(str(source))
    _edit_weights(source / weights, edit(key))
    resolve_source(str(source))  # the headers are sound: only loading shows the contradiction
    with pytest.raises(SourceError, match=words) as caught:
        SPECS[spec].load(source, {}, True)
    assert caught.value.message.startswith(weights.split("/")[0]) and key in caught.value.message
    with pytest.raises(SourceError, match=key):
        _convert_nothing(resolved, tmp_path / "out", spec)


# --- 2. config values of the wrong type, or far beyond any Stable Diffusion model ------------------------

@pytest.mark.parametrize("file, changes, error, words", [
    ("unet/config.json", {"sample_size": "big"}, SourceError, "sample_size must be an integer, not 'big'"),
    ("unet/config.json", {"block_out_channels": "wide"}, SourceError, "block_out_channels must be a list"),
    ("unet/config.json", {"layers_per_block": [1]}, SourceError, "layers_per_block must be a list of 2"),
    ("unet/config.json", {"cross_attention_dim": "32"}, SourceError, "cross_attention_dim must be an integer"),
    ("text_encoder/config.json", {"vocab_size": [1000]}, SourceError, "vocab_size must be an integer"),
    ("tokenizer/tokenizer_config.json", {"model_max_length": "long"}, SourceError, "model_max_length must be a number"),
    ("unet/config.json", {"sample_size": 100000}, UnsupportedModelError, "sample_size 100000 is far beyond"),
    ("unet/config.json", {"sample_size": [16, 100000]}, UnsupportedModelError, r"sample_size\[1\] 100000"),
    ("unet/config.json", {"block_out_channels": [32, 2_000_000]}, UnsupportedModelError,
     r"block_out_channels\[1\] 2000000 is far beyond"),
    ("vae/config.json", {"block_out_channels": [32, 5_000_000]}, UnsupportedModelError, r"block_out_channels\[1\]"),
    ("text_encoder/config.json", {"vocab_size": 1e10}, UnsupportedModelError, "vocab_size 10000000000.0 is far beyond"),
    ("text_encoder/config.json", {"max_position_embeddings": 10**9}, UnsupportedModelError,
     "max_position_embeddings 1000000000 is far beyond"),
    ("feature_extractor/preprocessor_config.json", {"crop_size": {"height": 10**6, "width": 10**6}},
     UnsupportedModelError, "crop_size.height 1000000 is far beyond"),
    # each value within its range, together far too large: the estimates refuse them
    ("unet/config.json", {"block_out_channels": [16384, 16384], "layers_per_block": 32}, UnsupportedModelError,
     "describes a UNet of about .* billion parameters"),
    ("unet/config.json", {"sample_size": 1024}, UnsupportedModelError, "sample_size 1024 makes one activation"),
    # non-finite numbers anywhere (JSON's Infinity and NaN, a literal overflowing to infinity), then the
    # real-valued fields the models compute with, each held to its range
    ("unet/config.json", {"norm_eps": float("inf")}, SourceError, "norm_eps is inf; every number in a config"),
    ("unet/config.json", {"norm_eps": float("nan")}, SourceError, "norm_eps is nan; every number"),
    ("vae/config.json", {"scaling_factor": float("-inf")}, SourceError, "scaling_factor is -inf"),
    ("unet/config.json", {"block_out_channels": [32, float("inf")]}, SourceError, r"block_out_channels\[1\] is inf"),
    ("text_encoder/config.json", {"layer_norm_eps": float("nan")}, SourceError, "layer_norm_eps is nan"),
    ("unet/config.json", {"norm_eps": 0.0}, UnsupportedModelError, r"norm_eps 0.0 is outside the range .*above 0"),
    ("unet/config.json", {"norm_eps": 1e308}, UnsupportedModelError, "norm_eps 1e\\+308 is outside"),
    ("vae/config.json", {"scaling_factor": -0.18215}, UnsupportedModelError, "scaling_factor -0.18215 is outside"),
    ("text_encoder/config.json", {"layer_norm_eps": "small"}, SourceError, "layer_norm_eps must be a number"),
    ("unet/config.json", {"mid_block_scale_factor": 1e9}, UnsupportedModelError, "mid_block_scale_factor"),
])
def test_bad_config_values_are_refused_naming_file_and_field(source: Path, tmp_path: Path, file: str,
                                                             changes: dict, error: type, words: str) -> None:
    resolved = resolve_source(str(source))
    _edit_json(source / file, **changes)
    with pytest.raises(error, match=words) as caught:
        resolve_source(str(source))
    assert caught.value.message.startswith(file) and caught.value.hint
    with pytest.raises(error, match=words):
        read_geometry(source)
    out = tmp_path / "out"
    with pytest.raises(error, match=words):
        convert_pipeline(resolved, out)
    assert not out.exists()  # refused before the output folder is made


def test_a_huge_latent_size_option_is_an_options_error(sd1_pipeline: Path) -> None:
    with pytest.raises(OptionsError, match="--latent-size 4096x4096 makes one activation"):
        read_geometry(sd1_pipeline, latent_size=(4096, 4096))
    with pytest.raises(OptionsError, match="two integers"):
        read_geometry(sd1_pipeline, latent_size=("64", 64))


# the configs of real pipelines (the fields that matter), which must pass however far the limits move
_SD15_UNET = {"_class_name": "UNet2DConditionModel", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
              "cross_attention_dim": 768, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
              "norm_num_groups": 32, "sample_size": 64,
              "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
              "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
_SD_VAE = {"_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512], "latent_channels": 4,
           "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 512}
_CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "max_position_embeddings": 77, "num_attention_heads": 12,
           "num_hidden_layers": 12, "vocab_size": 49408}
_SAFETY = {"projection_dim": 768, "vision_config": {"hidden_size": 1024, "intermediate_size": 4096,
                                                    "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14}}
_SDXL_UNET = _SD15_UNET | {
    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
    "sample_size": 128, "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816}
REAL = {
    "sd15": (_SD15_UNET, _CLIP_L, (64, 64, 8, 768)),
    "sd21": (_SD15_UNET | {"attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024, "sample_size": 96,
                           "use_linear_projection": True},
             _CLIP_L | {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                        "num_hidden_layers": 23}, (96, 96, 8, 1024)),
    "sdxl": (_SDXL_UNET, _CLIP_L, (128, 128, 8, 2048)),
}
# SDXL's second text encoder (OpenCLIP bigG) and its tokenizer
_XL_FILES = {"text_encoder_2/config.json": _CLIP_L | {"hidden_size": 1280, "intermediate_size": 5120,
                                                      "num_attention_heads": 20, "num_hidden_layers": 32,
                                                      "projection_dim": 1280},
             "tokenizer_2/tokenizer_config.json": {"model_max_length": 77}}


@pytest.mark.parametrize("name", REAL)
def test_real_pipeline_configs_pass(tmp_path: Path, name: str) -> None:
    unet, text, (h, w, factor, context) = REAL[name]
    files = {"unet/config.json": unet, "vae/config.json": _SD_VAE, "text_encoder/config.json": text,
             "safety_checker/config.json": _SAFETY, "feature_extractor/preprocessor_config.json": {"crop_size": 224},
             "tokenizer/tokenizer_config.json": {"model_max_length": 1e30}}  # "no limit of my own"
    if name == "sdxl":
        files |= _XL_FILES
    for file, data in files.items():
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file).write_text(json.dumps(data))
    g = read_geometry(tmp_path)
    assert (g.latent_height, g.latent_width, g.vae_scale_factor, g.context_dim, g.sequence_length) == \
        (h, w, factor, context, 77)
    read_geometry(tmp_path, latent_size=(128, 128))  # 1024 px from an SD 1.x/2.x model: allowed


# --- 3. NaN and infinite weights ---------------------------------------------------------------------------

def _poison(key: str, value: float):
    def edit(tensors):
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = value
    return edit


@pytest.mark.parametrize("spec, weights, key, value", [
    ("text_encoder", TEXT, "encoder.layers.0.mlp.fc1.weight", float("nan")),
    ("unet", UNET, "conv_in.weight", float("inf")),
    ("vae_decoder", VAE, "decoder.conv_in.bias", float("-inf")),
])
def test_non_finite_weights_are_refused_naming_component_and_tensor(source: Path, tmp_path: Path, spec: str,
                                                                    weights: str, key: str, value: float) -> None:
    resolved = resolve_source(str(source))
    _edit_weights(source / weights, _poison(key, value))
    # fetch reads the weights once before any work: the file and the tensor are named
    with pytest.raises(SourceError, match=f"{weights}: tensor {key} has 1 NaN or infinite value") as caught:
        fetch_source(resolve_source(str(source)))
    assert caught.value.hint
    # and the loader scans what it loaded (pickle weights too): the component and the tensor are named
    component = weights.split("/")[0]
    with pytest.raises(SourceError, match=f"{component}: tensor .*{key} has 1 NaN or infinite value"):
        _convert_nothing(resolved, tmp_path / "out", spec)


# --- 4. malformed model_index.json, missing tokenizer -----------------------------------------------------

def _index(**changes):
    def edit(folder: Path) -> None:
        _edit_json(folder / "model_index.json", **changes)
    return edit


def _only_class_name(folder: Path) -> None:
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                         "_diffusers_version": "0.42.1"}))


@pytest.mark.parametrize("edit, words", [
    (_index(_class_name=["StableDiffusionPipeline"]), "_class_name must be a pipeline class name"),
    (_index(_class_name=None), "_class_name must be a pipeline class name"),
    (_only_class_name, "model_index.json lists no components"),
    (_index(unet=[]), r"model_index.json entry unet must be a \[library, class\] pair"),
    (_index(vae=["diffusers", 3]), r"entry vae must be a \[library, class\] pair"),
    (_index(unet="UNet2DConditionModel", image_encoder=[]), r"entry unet must be a \[library, class\] pair"),
    (lambda folder: shutil.rmtree(folder / "tokenizer"), "there is no tokenizer folder"),
    (lambda folder: (folder / "tokenizer" / "merges.txt").unlink(), "tokenizer folder lacks vocab.json and merges.txt"),
    (lambda folder: (folder / "model_index.json").write_text("[1, 2]"), "model_index.json is not a JSON object"),
])
def test_malformed_pipelines_are_refused_at_resolve(source: Path, edit, words: str) -> None:
    edit(source)
    with pytest.raises(SourceError, match=words) as caught:
        resolve_source(str(source))
    assert caught.value.hint


# --- 5. links leading out of the source -------------------------------------------------------------------

def _link_readme(folder: Path, outside: Path) -> str:
    (outside / "secret.txt").write_text("---\nlicense: mit\n---\nnot yours to publish\n")
    (folder / "README.md").unlink()
    (folder / "README.md").symlink_to(outside / "secret.txt")
    return "README.md"


def _link_weights(folder: Path, outside: Path) -> str:
    shutil.move(folder / UNET, outside / "weights.safetensors")
    (folder / UNET).symlink_to(outside / "weights.safetensors")
    return UNET


def _link_tokenizer(folder: Path, outside: Path) -> str:
    shutil.move(folder / "tokenizer", outside / "tokenizer")
    os.symlink("../outside/tokenizer", folder / "tokenizer")  # relative links are resolved too
    return "tokenizer"


def _link_unused(folder: Path, outside: Path) -> str:
    (folder / "notes").mkdir()
    (folder / "notes" / "passwd").symlink_to("/etc/passwd")
    return "notes/passwd"


@pytest.mark.parametrize("link", [_link_readme, _link_weights, _link_tokenizer, _link_unused])
def test_links_leading_out_of_the_source_are_refused_naming_them(source: Path, tmp_path: Path, link) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    name = link(source, outside)
    with pytest.raises(SourceError, match=f"{name} is a link that resolves outside the source folder") as caught:
        resolve_source(str(source))
    assert "Copy what it points to" in caught.value.hint


def test_links_inside_the_source_are_followed(source: Path) -> None:
    (source / "unet" / "diffusion_pytorch_model.fp16.safetensors").symlink_to(source / UNET)
    os.symlink("tokenizer", source / "tokenizer_2")
    resolved = resolve_source(str(source))
    assert resolved.weight_files["unet"] == (UNET,)


# --- 6. repo ids: the Hub's rules, ASCII only ---------------------------------------------------------------

@pytest.mark.parametrize("text, ok", [
    ("org/name", True), ("name", True), ("Org_1/name-2.v3", True), ("_org/_name_", True), ("a" * 96, True),
    ("org/mödel", False), ("örg/model", False), ("org/ｍodel", False), ("org/model٣", False),
    ("a" * 97, False), ("org/" + "a" * 97, False), ("-org/name", False), ("org/name-", False),
    (".org/name", False), ("org/name.", False), ("org/a--b", False), ("org/a..b", False),
    ("org/name.git", False), ("org/name\n", False), ("org/", False), ("/name", False), ("a/b/c", False),
    ("org/na me", False), ("", False),
])
def test_repo_ids_follow_the_hubs_rules(text: str, ok: bool) -> None:
    assert looks_like_repo_id(text) is ok
    if not ok and text and "\n" not in text:
        with pytest.raises(SourceError):  # never sent to the Hub
            resolve_source(text, endpoint="http://127.0.0.1:9")
