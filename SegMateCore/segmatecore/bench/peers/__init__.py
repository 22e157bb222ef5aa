"""The benchmark's peers: other segmentation networks, each run on the whole CT the way it runs in practice.

- :mod:`.nnunet`: nnU-Net's default 3d_fullres network (dynamic-network-architectures);
- :mod:`.lightmedseg`, :mod:`.hrmedseg`, :mod:`.light_unetr`: three lightweight networks built
  from their papers' descriptions;
- :mod:`.sliding_window` and :mod:`.volume`: the whole-CT path the 3D peers share;
- :mod:`.costs`: parameters and multiply-accumulates in three counting conventions;
- :mod:`.registry`: one :class:`PeerSpec` per peer (how it runs, its paper's figures).

Only ``segmate bench`` imports this package; the inference path (:mod:`segmatecore.inference.predictor`,
``segment()``) never does, so the peers add nothing to what a user of SegMate loads.
"""
from __future__ import annotations

from segmatecore.bench.peers.nnunet import (NNUNET_CT_CLIP, NNUNET_CT_MEAN_STD, NNUNET_FEATURES, NNUNET_MODEL, NNUNET_PATCH,
                     NNUNET_SPACING_MM, NNUNET_STEP, PEER_CLASSES, build_nnunet_3d_fullres, run_nnunet_peer)
from segmatecore.bench.peers.registry import PEERS, SEGMATE_PAPER_ACCURACY, PaperFigures, PeerSpec, PublishedAccuracy, peer_spec
from segmatecore.bench.peers.sliding_window import gaussian_importance, patch_count, sliding_window_logits, sliding_window_starts
from segmatecore.bench.peers.volume import PeerResult, resample_to_spacing

__all__ = ["NNUNET_CT_CLIP", "NNUNET_CT_MEAN_STD", "NNUNET_FEATURES", "NNUNET_MODEL", "NNUNET_PATCH",
           "NNUNET_SPACING_MM", "NNUNET_STEP", "PEERS", "PEER_CLASSES", "PaperFigures", "PeerResult", "PeerSpec",
           "PublishedAccuracy", "SEGMATE_PAPER_ACCURACY", "build_nnunet_3d_fullres", "gaussian_importance",
           "patch_count", "peer_spec", "resample_to_spacing", "run_nnunet_peer", "sliding_window_logits",
           "sliding_window_starts"]
