"""SegMate network: blocks, encoder, decoder, heads and the factory."""
from segmatecore.models.encoder import BACKBONES, BackboneSpec, TimmEncoder, backbone_spec
from segmatecore.models.segmate import Encoded, SegMateNet, SegMateOutput, create_model

__all__ = ["BACKBONES", "BackboneSpec", "TimmEncoder", "backbone_spec", "Encoded", "SegMateNet", "SegMateOutput",
           "create_model"]
