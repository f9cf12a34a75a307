"""What a report records of its source, read back: the LoRAs it fused, and the references that resolve them again.

The writing side is :meth:`workers.source.source.Source.provenance`; the card and ``validate`` read it here.  Plain
data, no imports of the project, so the card can use it.
"""

from __future__ import annotations

from pathlib import Path


def lora_text(ref: str, scale: float) -> str:
    """The normalised ``REF:SCALE`` of a LoRA a job stores (equal requests key equal)."""
    return f"{ref}:{scale:g}"


def recorded_loras(provenance: dict) -> list[dict]:
    """The LoRAs a report's source provenance records (``lora0``, ``lora1``, …), in the order they were fused."""
    return [provenance[k] for k in sorted((k for k in provenance if k.startswith("lora") and k[4:].isdigit()),
                                          key=lambda k: int(k[4:]))]


def recorded_ref(lora: dict) -> str:
    """The ``REF:SCALE`` that resolves a recorded LoRA again: its Hub repo and file, else its folder and file."""
    ref = f"{lora['repo_id']}/{lora['file']}" if lora.get("repo_id") else str(Path(lora["path"]) / lora["file"])
    return lora_text(ref, lora["scale"])
