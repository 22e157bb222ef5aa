"""SegMate network: blocks, encoder, decoder, heads and the factory."""
from .encoder import BACKBONES, BackboneSpec, TimmEncoder, backbone_spec
from .segmate import SegMateNet, SegMateOutput, create_model

__all__ = ["BACKBONES", "BackboneSpec", "TimmEncoder", "backbone_spec", "SegMateNet", "SegMateOutput",
           "create_model"]
