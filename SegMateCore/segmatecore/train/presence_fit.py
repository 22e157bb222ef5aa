"""Refit the presence head for the label-free z pass, on frozen features of the training split.

The z pass (:mod:`segmatecore.inference.zpass`) reads the presence head with FiLM off. Trained jointly with
the masks under organ-balanced sampling (most samples hold an organ), the head can learn "present"
almost everywhere: it then finds organs on every slice and the z_norm estimate falls back to the
whole volume. The masks do not suffer from the same sampling (every slice has plenty of
background pixels), so the cure is confined to the head: run the trained network with FiLM off
over the training slices at their natural frequencies, keep the pooled 32-channel features that
feed the head, and fit each organ's logistic regression (the head's own Linear row) on the slices
that annotate that organ. Nothing else in the model changes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from segmatecore.data.geometry import canonical_image, to_canonical
from segmatecore.data.prepare import load_index
from segmatecore.data.prepared import load_cases
from segmatecore.data.preprocess import Preprocessing
from segmatecore.inference.batches import SliceBatches, SliceInputs
from segmatecore.runtime.network import SplitNetwork


log = logging.getLogger(__name__)

# Organs that a prepared dataset's field of view cannot hold, used as "absent" for the presence
# head although the dataset does not annotate them. OpenKBP CTs are head-and-neck plans (skull to
# upper thorax): no liver or kidney. Without these rows the liver and kidney rows would be fitted
# on one abdominal patient only and call them present in every neck slice.
OUT_OF_FIELD: dict[str, tuple[str, ...]] = {"openkbp": ("liver", "left_kidney", "right_kidney")}


@dataclass
class PresenceFeatures:
    """Pooled head inputs [n, C], presence targets [n, organs] and which organs each row annotates
    [n, organs], for the model's ``organs`` in channel order."""

    features: torch.Tensor
    targets: torch.Tensor
    annotated: torch.Tensor
    organs: list[str]


def collect_features(net: torch.nn.Module, data_dirs: Sequence[str | Path], split: str, every: int = 1,
                     batch_size: int = 8, out_of_field: dict[str, tuple[str, ...]] | None = None) -> PresenceFeatures:
    """Run ``net`` (FiLM off, as the z pass does) on every ``every``-th slice of ``split``.

    ``out_of_field`` (default :data:`OUT_OF_FIELD`) adds, per dataset kind, organs counted as absent.
    """
    pre = Preprocessing.from_metadata(net.metadata)
    cpu = torch.device("cpu")
    network = SplitNetwork(net.eval(), net.metadata, cpu, "fp32")
    captured: list[torch.Tensor] = []
    hook = net.presence_head[-1].register_forward_hook(lambda module, args, out: captured.append(args[0].float()))
    features, targets, annotated = [], [], []
    keys = list(net.metadata["organs"])
    try:
        out_of_field = OUT_OF_FIELD if out_of_field is None else out_of_field
        kinds = {index["root"]: index["kind"] for index in map(load_index, data_dirs)}
        for case in load_cases(data_dirs, split):
            absent = [k for k in out_of_field.get(kinds[str(case.root)], ())
                      if k in keys and k not in case.record["annotated"]]
            mask = torch.from_numpy(case.annotated_mask(keys)).bool()
            mask[[keys.index(k) for k in absent]] = True  # their presence targets are all zero
            if not mask.any():
                continue
            canonical, _ = to_canonical(canonical_image(case.image, case.record["spacing"]))
            inputs = SliceInputs(canonical, pre, cpu)
            t_all = np.arange(0, case.depth, every)
            captured.clear()
            with torch.inference_mode():
                for t in SliceBatches(t_all, lambda: batch_size):  # FiLM off, presence only: the z pass
                    network.decode(network.encode(inputs(t)), None, ("presence",))
            features.append(torch.cat(captured))
            targets.append(torch.from_numpy(case.presence_of(keys)[t_all]).float())
            annotated.append(mask.expand(len(t_all), -1))
            log.info("presence features: %s, %d slices", case.id, len(t_all))
    finally:
        hook.remove()
    return PresenceFeatures(torch.cat(features), torch.cat(targets), torch.cat(annotated), keys)


def fit_presence_head(linear: torch.nn.Linear, data: PresenceFeatures, l2: float = 1e-3,
                      min_each: int = 5) -> dict[str, dict[str, Any]]:
    """Refit ``linear``'s row for each organ with at least ``min_each`` present and absent slices.

    Plain (unweighted) logistic regression with a small L2 penalty, solved with L-BFGS from the
    current row, so the probabilities follow the natural frequency of the organ along z.
    Returns per organ the slice counts and the training accuracy before and after.
    """
    report = {}
    x = data.features
    for k, key in enumerate(data.organs):
        rows = data.annotated[:, k]
        y = data.targets[rows, k]
        positives, negatives = int(y.sum()), int((1 - y).sum())
        if positives < min_each or negatives < min_each:
            continue
        xk = x[rows]
        weight = linear.weight[k].detach().clone().float().requires_grad_(True)
        bias = linear.bias[k].detach().clone().float().requires_grad_(True)
        before = float(((xk @ weight + bias > 0).float() == y).float().mean())
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(xk @ weight + bias, y) + l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            linear.weight[k] = weight.to(linear.weight.dtype)
            linear.bias[k] = bias.to(linear.bias.dtype)
            after = float(((xk @ weight + bias > 0).float() == y).float().mean())
        report[key] = {"present": positives, "absent": negatives, "accuracy_before": round(before, 4),
                       "accuracy_after": round(after, 4)}
    return report


def presence_accuracy(linear: torch.nn.Linear, data: PresenceFeatures) -> dict[str, float]:
    """Per organ: how often presence > 0.5 agrees with the annotation, over annotated rows."""
    with torch.no_grad():
        predicted = torch.sigmoid(linear(data.features)) > 0.5
    out = {}
    for k, key in enumerate(data.organs):
        rows = data.annotated[:, k]
        if rows.any():
            out[key] = round(float((predicted[rows, k] == (data.targets[rows, k] > 0.5)).float().mean()), 4)
    return out
