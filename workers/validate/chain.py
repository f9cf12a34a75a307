"""A ControlNet and a ControlledUnet checked together: the ControlNet program's outputs fed to the ControlledUnet
program (both saved packages, executed by :mod:`workers.execute.executor`), against diffusers' ControlNet and
UNet step in float32, as the Swift pipeline runs them (it passes the ControlNet's outputs to the UNet by name).

The two packages are each validated on their own (:mod:`workers.validate.sequence`); this shows that they fit:
same residual names, order and shapes, and errors that stay within the bar once compounded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from workers.validate.checks import psnr_check
from workers.validate.report import Check

UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states")


def chain_reference(controlnet: nn.Module, unet: nn.Module, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """diffusers' ControlNet then UNet (float32) on the ControlNet's inputs (``encoder_hidden_states`` as the
    packages take it, (B, C, 1, S)): the noise prediction."""
    context = inputs["encoder_hidden_states"].float().squeeze(2).transpose(1, 2)
    with torch.no_grad():
        down, mid = controlnet(inputs["sample"].float(), inputs["timestep"].float(), context,
                               inputs["controlnet_cond"].float(), return_dict=False)
        noise = unet(inputs["sample"].float(), inputs["timestep"].float(), context, return_dict=False,
                     down_block_additional_residuals=down, mid_block_additional_residual=mid)[0]
    return noise.numpy()


def chain_check(controlnet_package: Path, unet_package: Path, inputs: dict[str, torch.Tensor],
                reference: np.ndarray, threshold: float) -> Check:
    """``psnr_chain``: the ControlNet program, then the ControlledUnet program fed its outputs by name, against
    ``reference`` (:func:`chain_reference`); fails when a residual the UNet takes is missing."""
    from workers.execute.executor import ProgramError, execute_program
    from workers.validate.readback import read_package

    try:
        controlnet = read_package(controlnet_package)
        residuals = execute_program(controlnet.program, {k: inputs[k] for k, *_ in controlnet.inputs},
                                    constants=controlnet.expanded)
        controlnet.release()
        unet = read_package(unet_package)
        missing = [k for k, *_ in unet.inputs if k not in residuals and k not in UNET_INPUTS]
        if missing:
            unet.release()
            return Check("psnr_chain", "failed", "program", threshold=threshold,
                         detail=f"the ControlNet gives no {', '.join(missing)}")
        fed = {k: inputs[k] if k in UNET_INPUTS else residuals[k] for k, *_ in unet.inputs}
        noise = execute_program(unet.program, fed, constants=unet.expanded)
        unet.release()
    except ProgramError as e:
        return Check("psnr_chain", "failed", "program", threshold=threshold, detail=f"ControlNet → UNet: {e}")
    return psnr_check("psnr_chain", "program", {"noise_pred": reference}, noise, ["noise_pred"], threshold)
