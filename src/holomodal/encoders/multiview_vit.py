"""MedST's multi-view image encoder: a timm ViT whose blocks are Mixtures of View Experts (MoVE).

Frontal and lateral chest X-rays share one token sequence, one patch embedding, one
positional table and one attention per block; after the attention each token goes through
the feed-forward expert of its own view (hard routing, no gate). The frontal expert is the
block's own (pretrained) ``norm2``/``mlp``; the lateral expert is a new LayerNorm + MLP of
the same shapes. The timm model is kept untouched under ``vit``, so ``vit.state_dict()``
has exactly timm's keys (pretrained or MGCA checkpoints load into it as they are); the
lateral experts live in the ModuleList ``lateral_experts`` (``lateral_experts.{i}.norm``,
``.mlp``, ``.ls``).

Whether the input is single- or multi-view is decided by the ``lateral`` argument alone,
never by the sequence length, and ``lateral_present`` is True where the lateral view exists
(the original re-implementation inferred the view layout from the length and inverted the
flag on the way in).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from holomodal.encoders.base import mask_absent
from holomodal.errors import ConfigError, DataError


def _unsupported(model_name: str, what: str) -> ConfigError:
    return ConfigError(
        f"MultiViewViT: timm model '{model_name}' is not supported: {what} (MoVE needs a standard "
        "timm VisionTransformer with one class token, a learned positional embedding that includes "
        "the class token, and plain Block/Attention layers)"
    )


def _check_supported(vit: nn.Module, model_name: str) -> None:
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    # an exact type: subclasses (distilled DeiT, ...) change the token layout in their own forward
    if type(vit) is not VisionTransformer:
        raise _unsupported(model_name, f"it is a {type(vit).__name__}, not a timm VisionTransformer")
    if not vit.has_class_token:
        raise _unsupported(model_name, "it has no class token")
    if vit.num_reg_tokens:
        raise _unsupported(model_name, f"it has {vit.num_reg_tokens} register tokens")
    if vit.num_prefix_tokens != 1:
        raise _unsupported(model_name, f"it has {vit.num_prefix_tokens} prefix tokens")
    if vit.no_embed_class:
        raise _unsupported(model_name, "no_embed_class=True (positional embedding without the class token)")
    if vit.pos_embed is None:
        raise _unsupported(model_name, "it has no positional embedding")
    if vit.dynamic_img_size:
        raise _unsupported(model_name, "dynamic_img_size=True")
    if not isinstance(vit.patch_drop, nn.Identity):
        raise _unsupported(model_name, "patch dropout (patch_drop_rate > 0) would break the view layout")
    if vit.global_pool != "token" or isinstance(vit.norm, nn.Identity):
        raise _unsupported(
            model_name, f"global_pool={vit.global_pool!r} without a final norm over the tokens (needs 'token')"
        )
    for index, block in enumerate(vit.blocks):
        if type(block) is not Block:
            raise _unsupported(model_name, f"blocks.{index} is a {type(block).__name__}, not a timm Block")
        if type(block.attn) is not Attention:
            kind = type(block.attn).__name__
            raise _unsupported(model_name, f"blocks.{index}.attn is a {kind}, not a timm Attention")


def _fresh_init_(module: nn.Module, model_name: str) -> None:
    """The init timm gives a new ViT's linear and norm layers: trunc-normal(0.02) weights, zero
    biases, unit norm scales. The truncation bounds stay at +-2 (absolute, as in timm), so at
    std 0.02 they practically never bite."""
    for name, sub in module.named_modules():
        own = list(sub.parameters(recurse=False))
        if not own:
            continue
        if isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.init.trunc_normal_(sub.weight, std=0.02)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif "norm" in type(sub).__name__.lower():
            if getattr(sub, "weight", None) is not None:
                nn.init.ones_(sub.weight)
            if getattr(sub, "bias", None) is not None:
                nn.init.zeros_(sub.bias)
        else:
            raise _unsupported(model_name, f"its MLP has a {type(sub).__name__} ('{name}') MoVE cannot re-initialise")


class LateralExpert(nn.Module):
    """The lateral view's half of a MoVE block: ``h + drop_path(ls(mlp(norm(h))))``."""

    def __init__(self, block: nn.Module, model_name: str) -> None:
        super().__init__()
        from timm.layers import LayerScale

        # same classes and shapes as the block's frontal expert, then fresh weights
        self.norm = copy.deepcopy(block.norm2)
        self.mlp = copy.deepcopy(block.mlp)
        _fresh_init_(self.norm, model_name)
        _fresh_init_(self.mlp, model_name)
        # its own layer scale at the model's initial value, not the block's ls2: a pretrained
        # frontal gamma is tuned to the frontal MLP's output scale, not to a fresh MLP's
        if isinstance(block.ls2, LayerScale):
            self.ls = LayerScale(block.ls2.gamma.numel(), init_values=block.ls2.init_values, inplace=block.ls2.inplace)
        elif isinstance(block.ls2, nn.Identity):
            self.ls = nn.Identity()
        else:
            raise _unsupported(model_name, f"its layer scale is a {type(block.ls2).__name__}")

    def forward(self, h: Tensor, drop_path: nn.Module) -> Tensor:
        return h + drop_path(self.ls(self.mlp(self.norm(h))))


class MultiViewViT(nn.Module):
    """A timm ViT with MoVE blocks over ``[CLS, P frontal patches, P lateral patches]``.

    Args:
        model_name: a standard timm ViT (``vit_base_patch16_224``, ``deit_base_patch16_224``, ...).
        pretrained: ``True``/``False`` as for ``timm.create_model``; ``"auto"``: timm's
            weights when its local cache holds them, else random init with one warning
            (as :class:`holomodal.encoders.timm_image.TimmImageEncoder`).
        img_size: input resolution, when not the model's default.
        **timm_kwargs: passed to ``timm.create_model`` (``depth``, ``embed_dim``, ``drop_path_rate``, ...).

    ``forward(frontal, lateral=None, lateral_present=None)`` returns ``(cls (B, D), patch_tokens
    (B, N, D), token_valid (B, N))``, all after the final norm: N = P frontal patches when
    ``lateral`` is None, else N = 2P (frontal, then lateral) with the lateral ones valid only
    where ``lateral_present``. A row whose lateral is absent gives the same CLS and frontal
    tokens as the single-view forward.
    """

    def __init__(
        self,
        model_name: str = "vit_base_patch16_224",
        pretrained: bool | str = False,
        img_size: int | None = None,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        import timm

        from holomodal.encoders.timm_image import resolve_pretrained

        pretrained = resolve_pretrained(model_name, pretrained, timm_kwargs, "MultiViewViT")
        if img_size is not None:
            timm_kwargs["img_size"] = img_size
        self.vit = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **timm_kwargs)
        _check_supported(self.vit, model_name)
        self.lateral_experts = nn.ModuleList(LateralExpert(block, model_name) for block in self.vit.blocks)
        self.output_dim = int(self.vit.embed_dim)
        self.num_patches = int(self.vit.patch_embed.num_patches)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each MoVE block (shared attention and both experts) in the backward pass."""
        self.grad_checkpointing = enable

    def _attention(self, attn: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
        """The block's multi-head self-attention, with a boolean mask (True = may attend)."""
        batch, length, _ = x.shape
        gate = attn.gate(x).sigmoid() if attn.gate is not None else None
        qkv = attn.qkv(x).reshape(batch, length, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=attn.attn_drop.p if self.training else 0.0, scale=attn.scale
        )
        out = attn.norm(out.transpose(1, 2).reshape(batch, length, attn.attn_dim))
        if gate is not None:
            out = out * gate
        return attn.proj_drop(attn.proj(out))

    def _block(self, index: int, x: Tensor, mask: Tensor | None, multi_view: bool) -> Tensor:
        block = self.vit.blocks[index]
        h = x + block.drop_path1(block.ls1(self._attention(block.attn, block.norm1(x), mask)))
        frontal_end = 1 + self.num_patches
        frontal = h[:, :frontal_end]
        frontal = frontal + block.drop_path2(block.ls2(block.mlp(block.norm2(frontal))))
        if not multi_view:
            return frontal
        lateral = self.lateral_experts[index](h[:, frontal_end:], block.drop_path2)
        return torch.cat([frontal, lateral], dim=1)

    def _attention_mask(self, lateral_present: Tensor) -> Tensor | None:
        """(B, 1, L, L) bool: where the lateral is absent, frontal queries see only frontal keys
        and each lateral query only itself, so the lateral tokens neither attend to nor are
        attended by the frontal ones; where present, every token sees every token."""
        if bool(lateral_present.all()):
            return None
        length = 1 + 2 * self.num_patches
        device = lateral_present.device
        is_lateral = torch.arange(length, device=device) > self.num_patches
        same_view = is_lateral[:, None] == is_lateral[None, :]
        # each lateral query keeps its own key, so no softmax row is ever empty
        without_lateral = same_view & (~is_lateral[:, None] | torch.eye(length, dtype=torch.bool, device=device))
        mask = lateral_present[:, None, None] | without_lateral[None]
        return mask[:, None]

    def forward(
        self, frontal: Tensor, lateral: Tensor | None = None, lateral_present: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        if frontal.dim() != 4:
            raise DataError(f"MultiViewViT: frontal images must be (B, C, H, W), got shape {tuple(frontal.shape)}")
        batch = frontal.shape[0]
        vit = self.vit
        tokens = vit._pos_embed(vit.patch_embed(frontal))
        mask = None
        if lateral is not None:
            if lateral.shape != frontal.shape:
                raise DataError(
                    f"MultiViewViT: lateral images {tuple(lateral.shape)} must match the frontal ones "
                    f"{tuple(frontal.shape)}"
                )
            if lateral_present is None:
                lateral_present = torch.ones(batch, dtype=torch.bool, device=frontal.device)
            elif lateral_present.dtype != torch.bool or lateral_present.shape != (batch,):
                raise DataError(
                    "MultiViewViT: lateral_present must be a (B,) bool tensor, True where the lateral view exists; "
                    f"got dtype {lateral_present.dtype}, shape {tuple(lateral_present.shape)}"
                )
            lateral_present = lateral_present.to(frontal.device)
            # absent laterals are zeroed, so whatever they hold (NaN included) cannot leak
            # through the masked attention's arithmetic
            lateral = mask_absent(lateral, lateral_present)
            lateral_tokens = vit.pos_drop(vit.patch_embed(lateral) + vit.pos_embed[:, 1:])
            tokens = torch.cat([tokens, lateral_tokens], dim=1)
            mask = self._attention_mask(lateral_present)
        elif lateral_present is not None and bool(lateral_present.any()):
            raise DataError("MultiViewViT: lateral_present says a lateral view exists but no lateral images were given")
        x = vit.norm_pre(tokens)
        multi_view = lateral is not None
        for index in range(len(vit.blocks)):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(self._block, index, x, mask, multi_view, use_reentrant=False)
            else:
                x = self._block(index, x, mask, multi_view)
        x = vit.norm(x)
        patch_tokens = x[:, 1:]
        if not multi_view:
            token_valid = torch.ones(batch, self.num_patches, dtype=torch.bool, device=x.device)
        else:
            token_valid = torch.cat(
                [
                    torch.ones(batch, self.num_patches, dtype=torch.bool, device=x.device),
                    lateral_present[:, None].expand(batch, self.num_patches),
                ],
                dim=1,
            )
        return x[:, 0], patch_tokens, token_valid
