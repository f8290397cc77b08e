"""Backbones shared by whole method families: the image-text CLIP that prompt methods adapt."""

from holomodal.backbones.clip import CLIP_MEAN, CLIP_STD, TINY_CLIP, CLIPBackbone, resolve_backbone

__all__ = ["CLIP_MEAN", "CLIP_STD", "TINY_CLIP", "CLIPBackbone", "resolve_backbone"]
