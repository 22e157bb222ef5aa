"""The network's passes over one volume: presence with FiLM off, then masks with z.

:class:`NetworkPasses` joins the seams of a run: the slice inputs (:mod:`.batches`), the network
(:mod:`segmatecore.runtime.network`, mirrored by :mod:`.tta` when asked), the feature cache that
lets the main pass reuse the first pass's encodings, and the runner's device policy.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from segmatecore.inference.batches import SliceInputs
from segmatecore.inference.runner import BatchRunner
from segmatecore.inference.tta import MirroredNetwork
from segmatecore.models import SegMateOutput
from segmatecore.runtime.feature_cache import CachedEncoder, FeatureCache
from segmatecore.runtime.network import Network, num_rows


def _cat_outputs(parts: list[SegMateOutput]) -> SegMateOutput:
    def cat(values: list[torch.Tensor | None]) -> torch.Tensor | None:
        return None if values[0] is None else torch.cat(values)
    return SegMateOutput(cat([p.seg for p in parts]), cat([p.boundary for p in parts]),
                         cat([p.presence for p in parts]), ())


class NetworkPasses:
    """Network outputs for slices of one volume, with the time the network took."""

    def __init__(self, network: Network, inputs: SliceInputs, runner: BatchRunner,
                 mirror: list[int] | None = None, cache: FeatureCache | None = None):
        self.inputs = inputs
        self.runner = runner
        self.device = network.device
        self.decoder: Any = MirroredNetwork(network, mirror) if mirror is not None else network
        self.cache = cache if network.caches_encodings else None
        self.encoder = CachedEncoder(self.decoder.encode, self.cache, network.device)
        self.network_seconds = 0.0
        runner.on_device_change = self._moved

    def _moved(self, device: torch.device) -> None:
        self.device = self.inputs.device = self.encoder.device = device

    def outputs(self, t: np.ndarray, z_norm: np.ndarray | None, remember: bool = False,
                heads: Sequence[str] = ("seg", "presence")) -> SegMateOutput:
        """The heads ``heads`` for slices ``t``. ``remember``: keep their encodings for a later
        call (the first pass); otherwise encodings kept earlier are used once and released."""
        z = None if z_norm is None else torch.from_numpy(np.asarray(z_norm, dtype=np.float32)).to(self.device)
        start, inputs_before = time.perf_counter(), self.inputs.seconds
        encoded = self.encoder.encode(t, self.inputs, remember)
        out = self._decode(encoded, z, tuple(heads))
        if not remember:
            self.encoder.done_with(t)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.network_seconds += time.perf_counter() - start - (self.inputs.seconds - inputs_before)
        return out

    def _decode(self, encoded: Any, z: torch.Tensor | None, heads: tuple[str, ...]) -> SegMateOutput:
        """Decode in batches of the batch size: a main-pass batch may be twice that (see
        :meth:`main_pass_scale`); the decoder's memory stays one batch's."""
        count, size = num_rows(encoded), self.runner.batch_size
        parts = [self.decoder.decode(encoded.rows(a, a + size), None if z is None else z[a:a + size], heads)
                 for a in range(0, count, size)]
        return parts[0] if len(parts) == 1 else _cat_outputs(parts)

    def presence(self, t: np.ndarray, channels: Sequence[int]) -> np.ndarray:
        """First pass (FiLM off): [len(t), len(channels)] presence probabilities; the slices'
        encodings stay in the feature cache for the main pass."""
        out = np.zeros((len(t), len(channels)), dtype=np.float32)
        position = {int(v): i for i, v in enumerate(t)}
        columns = torch.tensor(list(channels), dtype=torch.long)

        def step(batch: np.ndarray) -> None:
            logits = self.outputs(batch, None, remember=True, heads=("presence",)).presence
            values = torch.sigmoid(logits[:, columns.to(logits.device)].float()).cpu().numpy()
            out[[position[int(v)] for v in batch]] = values

        self.runner.run("z_pass", np.asarray(t), step)
        return out

    def main_pass_scale(self, t_run: np.ndarray) -> int:
        """2 when the cache holds about half the slices or more: each main-pass batch then still
        encodes a full batch, and decodes it in two; 1 otherwise."""
        if self.cache is None or not self.cache.entries:
            return 1
        return 2 if 2 * self.cache.uncached(t_run) <= 1.2 * len(t_run) else 1
