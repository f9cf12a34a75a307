"""A source: what is known about a model to convert after resolving it, and the files it is read from.

A :class:`Source` is resolved once (a Hub repo pinned to a commit, its files listed), stored with a job, and
read back by every stage, which fetches exactly its files (:mod:`workers.source.fetch`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from workers.errors import SourceError


@dataclass(frozen=True)
class Source:
    """What we know about a source model after resolving it (and, once fetched, where it is)."""

    id: str  # repo id, or the name given to a local folder; used in file names and provenance
    pipeline_class: str
    model_index: dict
    components: tuple[str, ...]  # diffusers components present in model_index.json with weights
    weight_files: dict[str, tuple[str, ...]]  # component -> weight files to load (repo-relative)
    weight_variant: dict[str, str | None]  # component -> diffusers `variant` ("fp16") or None
    use_safetensors: bool = True
    repo_id: str | None = None
    revision: str | None = None
    sha: str | None = None
    license: str | None = None
    private: bool | None = None  # the Hub repo's visibility; None for local folders
    path: Path | None = None  # local folder holding the files (after fetch, for Hub sources)
    # a source of one component only (``--vae``): the folder inside the repo holding it ("" for the root)
    subfolder: str | None = None
    # other sources this conversion takes components from: "vae" (a VAE replacing the source's) and
    # "refiner" (an SDXL refiner's UNet, shipped as UnetRefiner); fetch links them into one folder
    extras: tuple[tuple[str, "Source"], ...] = ()
    origin: Path | None = None  # a composed source's own folder (``path`` is then the folder of links)
    # a Hub source's files a fetch downloads (repo-relative) and their sizes, pinned with its sha
    files: dict[str, int] | None = None
    # a single-file checkpoint (:mod:`workers.source.checkpoint`): the file, its sha256, its architecture's key,
    # and the configs it is unpacked with (a shipped folder's name; None: the "config" extra source's)
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    architecture: str | None = None
    configs: str | None = None
    lora_scale: float | None = None  # a LoRA (``--lora``): the scale it is fused at
    unpacked: Path | None = None  # the temporary folder an unpacked or fused source is in (removed by release)

    @property
    def name(self) -> str:
        """The part of the id after the namespace; used for output repo names."""
        return self.id.rsplit("/", 1)[-1]

    def download_patterns(self) -> list[str]:
        """The files a fetch needs: index, configs, tokenizer, chosen weights, card. Nothing else."""
        if self.checkpoint is not None:  # a single-file checkpoint: the file (and the card)
            return ["README.md", self.checkpoint]
        if self.subfolder is not None:  # one component: its config and weights
            return ["README.md", f"{self.subfolder}/config.json".lstrip("/"),
                    *(f for names in self.weight_files.values() for f in names)]
        patterns = ["model_index.json", "README.md", "scheduler/*.json"]
        patterns += [f"{tokenizer}/*" for tokenizer in ("tokenizer", "tokenizer_2") if tokenizer in self.components]
        for component in self.components:
            patterns.append(f"{component}/*.json")
            patterns.extend(self.weight_files.get(component, ()))
        if "safety_checker" in self.components:
            patterns.append("feature_extractor/*")
        return patterns

    def with_path(self, path: Path) -> "Source":
        return replace(self, path=path)

    def pinned(self, listing: dict[str, int]) -> "Source":
        """This source with the exact files a fetch needs (:meth:`download_patterns` matched against the repo's
        ``listing``: path -> size), so every host fetches exactly those."""
        from huggingface_hub.utils import filter_repo_objects

        chosen = filter_repo_objects(sorted(listing), allow_patterns=self.download_patterns())
        return replace(self, files={name: listing[name] for name in chosen})

    def to_dict(self) -> dict[str, Any]:
        """What a job stores of its source, as JSON: everything but where the files are on one host."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("path", "origin", "extras", "unpacked")}
        data["extras"] = [[kind, extra.to_dict()] for kind, extra in self.extras]
        return json.loads(json.dumps(data))  # tuples become lists: the JSON a database column holds

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Source":
        """A source stored by :meth:`to_dict`."""
        values = dict(data)
        values["components"] = tuple(values["components"])
        values["weight_files"] = {k: tuple(v) for k, v in values["weight_files"].items()}
        values["extras"] = tuple((kind, cls.from_dict(extra)) for kind, extra in values.get("extras", ()))
        return cls(**values)

    def provenance(self) -> dict:
        """What a report records of this source (and of each extra one)."""
        found = {"id": self.id, "repo_id": self.repo_id, "revision": self.revision, "sha": self.sha,
                 "path": str(self.origin or self.path), "pipeline_class": self.pipeline_class,
                 "license": self.license}
        if self.checkpoint is not None:
            from workers.source.checkpoint import ARCHITECTURES

            canonical = ARCHITECTURES[self.architecture].canonical if self.architecture and self.configs else None
            found["checkpoint"] = {"file": self.checkpoint, "sha256": self.checkpoint_sha256,
                                   "architecture": self.architecture, "configs": canonical}
        if self.lora_scale is not None:
            found["scale"], found["file"] = self.lora_scale, self.weight_files["lora"][0]
        for kind, extra in self.extras:
            found[kind] = extra.provenance()
        return found


def source_files(root: Path, *, source: str, inside: tuple[Path, ...] = ()) -> dict[str, int]:
    """Every file under ``root`` (relative POSIX path -> size), following links that stay in the source.

    A file or folder that is a link resolving outside ``root`` (and outside ``inside``: a Hub cache's blob
    store) is refused, naming it: its contents would otherwise end up in a conversion or a model card.
    Raises SourceError.
    """
    root = root.resolve()
    allowed = (root, *(p.resolve() for p in inside))
    sizes: dict[str, int] = {}

    def walk(folder: Path, prefix: str, ancestors: frozenset[Path]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            raise SourceError(f"{source}: cannot read {prefix or '.'} ({e.strerror})", source=source,
                              hint="Check the folder's permissions.") from e
        for entry in entries:
            name, path = prefix + entry.name, folder / entry.name
            if entry.is_symlink():
                try:
                    real = path.resolve()
                except (OSError, RuntimeError):  # a loop of links
                    real = None
                if real is None or not any(real.is_relative_to(a) for a in allowed):
                    raise SourceError(f"{source}: {name} is a link that resolves outside the source folder",
                                      source=source, hint="Copy what it points to into the source, or remove the link.")
            if entry.is_dir():  # follows links (known by now to stay inside); a link back up would loop
                real = path.resolve()
                if real not in ancestors:
                    walk(path, name + "/", ancestors | {real})
            elif entry.is_file():
                sizes[name] = entry.stat().st_size

    walk(root, "", frozenset({root}))
    return sizes
