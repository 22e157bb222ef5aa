"""SegMate network: blocks, encoder, decoder, heads and the factory."""
from .encoder import BACKBONES, BackboneSpec, TimmEncoder, backbone_spec
from .segmate import Encoded, SegMateNet, SegMateOutput, create_model

__all__ = ["BACKBONES", "BackboneSpec", "TimmEncoder", "backbone_spec", "Encoded", "SegMateNet", "SegMateOutput",
           "create_model"]
