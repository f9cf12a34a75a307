"""Package folders on disk: sizes, hard-linked copies, and fingerprints that tell packages apart by content."""

from __future__ import annotations

from pathlib import Path

from workers.package.files import fingerprints, link_package, package_size


def test_fingerprints_tell_packages_apart_by_content_alone(sd1_conversion, tmp_path: Path) -> None:
    out, report = sd1_conversion
    package = next(p for p in report.packages if p.component == "text_encoder" and not p.shared_from)
    one, two = tmp_path / "one" / "te.mlpackage", tmp_path / "two" / "te.mlpackage"
    link_package(out / package.path, one)
    link_package(out / package.path, two)
    assert package_size(one) == package.size_bytes
    assert fingerprints(one.parent) == fingerprints(two.parent) != {}
    weights = next(two.rglob("weight.bin"))
    data = bytearray(weights.read_bytes())
    weights.unlink()  # the copy's own file, not the hard link to the conversion's
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert fingerprints(one.parent) != fingerprints(two.parent)
