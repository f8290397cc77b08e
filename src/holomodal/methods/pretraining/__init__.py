"""Pre-training methods that live beside the classifiers they feed (CLIP for the prompt methods).

They are registered with :func:`holomodal.pretraining.register_pretraining`; TIP's is in
:mod:`holomodal.methods.tip` beside its fine-tuning classifier.
"""
