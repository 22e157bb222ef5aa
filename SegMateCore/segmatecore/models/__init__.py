"""SegMate network: blocks, encoder, decoder, heads, the network and its factory."""
from segmatecore.models.encoder import BACKBONES, BackboneSpec, TimmEncoder, backbone_spec
from segmatecore.models.factory import create_model
from segmatecore.models.heads import PresenceHead
from segmatecore.models.network import Encoded, SegMateNet, SegMateOutput
from segmatecore.models.widths import SegMateWidths

__all__ = ["BACKBONES", "BackboneSpec", "TimmEncoder", "backbone_spec", "Encoded", "PresenceHead", "SegMateNet",
           "SegMateOutput", "SegMateWidths", "create_model"]
