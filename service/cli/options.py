"""Command-line options shared by ``convert``, ``submit`` and ``watch add``: one definition, one help text."""

from __future__ import annotations

import typer

ATTENTION = typer.Option("original,split_einsum_v2", "--attention",
                         help="Comma-separated attention layouts: original (Mac GPU), split_einsum_v2 (Neural "
                              "Engine), split_einsum (Neural Engine, the layout older apps ask for).")
BITS = typer.Option(6, "--bits", help="Palettization bits: 1, 2, 4, 6 or 8; 0 for float16 packages only.")
DEPLOYMENT_TARGET = typer.Option(None, "--deployment-target",
                                 help="Minimum OS of every package: iOS15-iOS18 or macOS12-macOS15 (default: "
                                      "float16 macOS13/iOS16, palettized iOS17/macOS14).")
CHUNK_UNET = typer.Option(False, "--chunk-unet",
                          help="Also ship each float16 UNet cut in two (UnetChunk1/UnetChunk2), for iPhone and iPad.")
VAE = typer.Option(None, "--vae", metavar="REPO",
                   help="Convert this VAE (a Hub repo or folder with an AutoencoderKL at its root or in vae/) "
                        "instead of the source's, e.g. a float16-safe SDXL VAE (then converted in float16).")
REFINER = typer.Option(None, "--refiner", metavar="REPO",
                       help="SDXL: also ship this refiner's UNet (UnetRefiner) in the base's repos.")
CHUNKS_ONLY = typer.Option(False, "--chunks-only",
                           help="Ship the UNet chunks instead of the whole float16 UNet (implies --chunk-unet).")
