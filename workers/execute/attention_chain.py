"""Fused attention chains: ``matmul → softmax → matmul`` run one block of query rows at a time.

:func:`attention_chains` finds the chains in a program that can be fused without changing any value;
:func:`run_attention_chain` computes one, rounding the scores and probabilities exactly as the program
declares, without holding all the scores at once.  Used by :func:`workers.execute.executor.execute_program`.
"""

from __future__ import annotations

import torch

from workers.execute.kernels_base import Precision, Args, dtype_name, input_vars, native, storage_dtype


_ROW_BLOCK_BYTES = 4 << 20  # float32 scores of one block of query rows in a fused attention chain


def attention_chains(operations: list, outputs: set[str]) -> dict[int, tuple[int, int]]:
    """Score matmul index -> (softmax index, value matmul index) for each ``matmul → softmax → matmul``.

    Taken only where the scores and probabilities feed nothing else, the softmax runs over the last axis,
    and the value matmul's other input exists before the chain starts: then the three can run one block of
    query rows at a time, each value rounded exactly as the program says, without holding all the scores.
    """
    index_of = {op.outputs[0].name: i for i, op in enumerate(operations) if len(op.outputs) == 1}
    consumers: dict[str, list[int]] = {}
    for i, op in enumerate(operations):
        for var in input_vars(op):
            consumers.setdefault(var.name, []).append(i)

    def sole_user(op, op_type: str) -> int | None:
        """The index of the one operation using ``op``'s output, if it is an ``op_type`` and nothing else is."""
        name = op.outputs[0].name
        users = consumers.get(name, [])
        if len(users) != 1 or name in outputs or operations[users[0]].op_type != op_type:
            return None
        return users[0]

    chains = {}
    for i, op in enumerate(operations):
        if op.op_type != "matmul" or len(op.outputs) != 1 or op.outputs[0].rank < 3:
            continue
        j = sole_user(op, "softmax")
        if j is None:
            continue
        softmax = operations[j]
        axis = softmax.inputs["axis"].val if softmax.inputs.get("axis") is not None else -1
        if axis is None or int(axis) not in (-1, op.outputs[0].rank - 1):
            continue
        k = sole_user(softmax, "matmul")
        if k is None:
            continue
        probabilities = softmax.outputs[0].name
        value_op = operations[k]
        if value_op.inputs["x"].name != probabilities or value_op.inputs["y"].name == probabilities \
                or (value_op.inputs.get("transpose_x") is not None and value_op.inputs["transpose_x"].val):
            continue
        if index_of.get(value_op.inputs["y"].name, -1) > i:
            continue  # the values are computed inside the chain: run it as written
        chains[i] = (j, k)
    return chains


def run_attention_chain(first: Args, softmax: Args, second: Args, precision: Precision) -> torch.Tensor:
    """``matmul(softmax(matmul(q, k)), v)`` block by block of query rows, every step rounded as declared."""
    score_dtype = storage_dtype(dtype_name(first.op.outputs[0]), precision)
    probability_dtype = storage_dtype(dtype_name(softmax.op.outputs[0]), precision)
    q, k, v = first.r("x"), first.r("y"), second.r("y")
    if first.v("transpose_x", False):
        q = q.transpose(-1, -2)
    if first.v("transpose_y", False):
        k = k.transpose(-1, -2)
    if second.v("transpose_y", False):
        v = v.transpose(-1, -2)
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    rows, keys, width = q.shape[-2], k.shape[-1], v.shape[-1]
    q = q.expand(batch + q.shape[-2:]).reshape((-1,) + q.shape[-2:])
    k = k.expand(batch + k.shape[-2:]).reshape((-1,) + k.shape[-2:])
    v = v.expand(batch + v.shape[-2:]).reshape((-1,) + v.shape[-2:])
    out = torch.empty((q.shape[0], rows, width), dtype=second.out_dtype)
    block = max(1, _ROW_BLOCK_BYTES // (4 * keys))
    for n in range(q.shape[0]):
        kn, vn = k[n].float(), v[n].float()
        for start in range(0, rows, block):
            scores = torch.matmul(q[n, start:start + block].float(), kn).to(score_dtype)
            if scores.dtype == torch.float16 and probability_dtype == torch.float16:
                probabilities = native(lambda t: torch.softmax(t, dim=-1), scores)
            else:
                probabilities = torch.softmax(scores.float(), dim=-1)
            out[n, start:start + block] = torch.matmul(probabilities.to(probability_dtype).float(), vn)
    return out.reshape(batch + (rows, width))
