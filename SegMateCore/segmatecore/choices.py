"""The values that the ``segmate`` options offer, in a module that imports nothing heavy.

Building the command line's parser (and so every ``--help``) must not import PyTorch, which takes
seconds; the modules that use these values (inference, optimize, feature_cache, bench, peers)
import them from here, so that the parser and the engine cannot disagree.
"""
from __future__ import annotations

Z_NORM_MODES = ("auto", "volume", "none")
PRECISIONS = ("auto", "fp32", "bf16")
RUNTIMES = ("auto", "torch", "openvino")
FEATURE_CACHE_MB = 512  # memory the first pass may keep its encodings in, by default
BENCH_BACKBONES = ("fastvit_t12", "mambaout_tiny", "efficientnetv2_m")
PEER_KEYS = ("nnunet_3d_fullres", "lightmedseg", "hrmedseg", "light_unetr")  # segmatecore.bench.peers.PEERS, in order
DEVICE_DEFAULT = "auto"
DEVICE_HELP = "auto (CUDA if available, then Apple MPS, else the CPU), cpu, cuda, cuda:N or mps"
DICOM_FORMATS = ("rtstruct", "dicomseg")  # output formats that need the DICOM series the CT was read from
# The most smoothing along z a model or a user may set: more would blur an organ's ends by
# centimetres, and calibration never needs it.
MAX_Z_SMOOTHING_MM = 20.0
