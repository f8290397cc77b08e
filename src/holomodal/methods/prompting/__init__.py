"""Prompt tuning of a frozen CLIP when the image or the text may be missing: MMP, DCP, and
the two reference points of DCP's protocol (frozen-CLIP baseline, full fine-tuning)."""

from holomodal.methods.prompting import baselines, dcp, mmp  # noqa: F401  (registers)
