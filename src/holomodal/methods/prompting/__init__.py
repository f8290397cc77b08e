"""Prompt tuning of a frozen CLIP when the image or the text may be missing: MMP, DCP, and
the two reference points of DCP's protocol (frozen-CLIP baseline, full fine-tuning).

Each method's module is imported when the method is first asked for
(:data:`holomodal.methods.METHOD_MODULES`)."""
