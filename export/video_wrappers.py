"""SAM 2's video path as three graphs, written over a built SAM 2 model's own modules.

They take the image encoder's ``image_embed`` (the lowest-resolution features with
``no_mem_embed`` added, as the image path needs them) and remove ``no_mem_embed`` where SAM 2
uses the features without it, so the video path shares the image encoder's graph and its store.

``MemoryAttention`` is ``SAM2Base._prepare_memory_conditioned_features`` after the memory bank's
selection (which frames, which pointers: the caller's bookkeeping): the memory frames with their
spatial and temporal encodings, the object pointers split into tokens with their projected
temporal encodings, then ``memory_attention``. SAM 2 rotates queries and keys with complex
numbers (RoPE), which ONNX has no type for; here the same rotation is written with cosines and
sines. Padding frames and pointers (``*_valid`` = 0) are removed from the attention by an additive
bias, which is exactly equivalent to leaving them out; a batch can so hold objects whose memories
differ in length.

``MemoryEncoder`` is ``SAM2Base._encode_new_memory``: the chosen low-resolution mask upsampled as
SAM 2 does, binarized when it came from clicks, scaled, encoded with the frame's features, and
marked with ``no_obj_embed_spatial`` where the object is absent.

``TrackDecoder`` is ``SAM2Base._forward_sam_heads`` before its choice among the masks: the prompt
decoder on the conditioned features, with every mask token's object pointer (after SAM 2's
no-object handling) and the object score. Which mask and pointer to keep (multimask or not, the
stability fallback) is cheap and stays with the caller. Its point slots follow SAM 2's video
path: every PAD_LABEL slot is a not-a-point token (a frame without clicks has two), and
MASKED_LABEL slots are left out.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskserve.core.signatures import EMBED_SIZE, IMAGE_SIZE, MASKED_LABEL, NO_OBJECT_SCORE
from maskserve.export.wrappers import _MASKED, MaskHeads

_TOKENS = EMBED_SIZE * EMBED_SIZE


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE on [B, H, N, D] where N is a multiple of the table's positions (memory frames repeat it)."""
    b, h, n, d = x.shape
    pairs = x.reshape(b, h, -1, cos.shape[0], d // 2, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    out = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1)
    return out.reshape(b, h, n, d)


def _rope_attention(
    attn: Any, q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor, extra_k: Tensor | None, bias: Tensor | None
) -> Tensor:
    """sam2's ``RoPEAttention.forward``; ``extra_k`` are keys without rotation (the pointer tokens) after ``k``."""
    q = _rotate(attn._separate_heads(attn.q_proj(q), attn.num_heads), cos, sin)
    keys = _rotate(attn._separate_heads(attn.k_proj(k), attn.num_heads), cos, sin)
    if extra_k is not None:
        keys = torch.cat([keys, attn._separate_heads(attn.k_proj(extra_k), attn.num_heads)], dim=2)
    v = attn._separate_heads(attn.v_proj(v), attn.num_heads)
    mask = None if bias is None else bias[:, None, None, :]
    out = F.scaled_dot_product_attention(q, keys, v, attn_mask=mask)
    return attn.out_proj(attn._recombine_heads(out))


def _sine_pe(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """sam2's ``get_1d_sine_pe`` over any shape of positions."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32)
    scale = temperature ** (2 * torch.div(steps, 2, rounding_mode="floor") / half)
    angles = positions.unsqueeze(-1) / scale
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class MemoryAttention(nn.Module):
    def __init__(self, sam2_model: Any) -> None:
        super().__init__()
        self.model: Any = sam2_model  # sam2's modules are untyped
        attn = sam2_model.memory_attention.layers[0].self_attn
        freqs = attn.compute_cis(end_x=EMBED_SIZE, end_y=EMBED_SIZE)
        self.cos: Tensor
        self.sin: Tensor
        self.curr_pos: Tensor
        self.memory_pos: Tensor
        self.register_buffer("cos", freqs.real.float().contiguous(), persistent=False)
        self.register_buffer("sin", freqs.imag.float().contiguous(), persistent=False)
        with torch.no_grad():
            feats = torch.zeros(1, sam2_model.hidden_dim, EMBED_SIZE, EMBED_SIZE)
            curr_pos = sam2_model.image_encoder.neck.position_encoding(feats)  # [1, C, 64, 64]
            mem = torch.zeros(1, sam2_model.mem_dim, EMBED_SIZE, EMBED_SIZE)
            memory_pos = sam2_model.memory_encoder.position_encoding(mem)  # [1, 64, 64, 64]
        self.register_buffer("curr_pos", curr_pos.flatten(2).transpose(1, 2).contiguous(), persistent=False)
        self.register_buffer("memory_pos", memory_pos.flatten(2).transpose(1, 2)[0].contiguous(), persistent=False)

    def forward(
        self,
        image_embed: Tensor,
        memory: Tensor,
        memory_tpos: Tensor,
        memory_valid: Tensor,
        obj_ptrs: Tensor,
        obj_ptr_tpos: Tensor,
        obj_ptr_valid: Tensor,
    ) -> Tensor:
        model = self.model
        batch, channels = image_embed.shape[0], image_embed.shape[1]
        mem_dim = model.mem_dim
        curr = (image_embed - model.no_mem_embed.reshape(1, -1, 1, 1)).flatten(2).transpose(1, 2)

        # memory frames: [B, F, 64, 64, 64] -> [B, F*4096, 64], spatial + temporal encodings
        mem = memory.flatten(3).transpose(2, 3)
        tpos_table = model.maskmem_tpos_enc.reshape(model.num_maskmem, mem_dim)
        tpos = tpos_table[(model.num_maskmem - 1 - memory_tpos).long()]  # [B, F, 64]
        mem_pos = (self.memory_pos[None, None] + tpos[:, :, None, :]).reshape(batch, -1, mem_dim)
        mem = mem.reshape(batch, -1, mem_dim)

        # object pointers: [B, P, 256] -> [B, P*4, 64], each pointer's temporal encoding on its 4 tokens
        split = channels // mem_dim
        ptr_tokens = obj_ptrs.reshape(batch, -1, mem_dim)
        if model.add_tpos_enc_to_obj_ptrs:
            tpos_dim = channels if model.proj_tpos_enc_in_obj_ptrs else mem_dim
            ptr_pos = model.obj_ptr_tpos_proj(_sine_pe(obj_ptr_tpos, tpos_dim))
        else:
            ptr_pos = torch.zeros_like(obj_ptrs[..., :mem_dim])
        ptr_pos = ptr_pos.unsqueeze(2).expand(-1, -1, split, -1).reshape(batch, -1, mem_dim)

        keep = torch.cat(
            [
                memory_valid.unsqueeze(-1).expand(-1, -1, _TOKENS).reshape(batch, -1),
                obj_ptr_valid.unsqueeze(-1).expand(-1, -1, split).reshape(batch, -1),
            ],
            dim=1,
        )
        bias = torch.where(keep > 0.5, 0.0, _MASKED).to(curr.dtype)

        attention = model.memory_attention
        output = curr
        curr_pos = self.curr_pos.expand(batch, -1, -1)
        if attention.pos_enc_at_input:
            output = output + 0.1 * curr_pos
        values = torch.cat([mem, ptr_tokens], dim=1)
        for layer in attention.layers:
            tgt2 = layer.norm1(output)
            q = tgt2 + curr_pos if layer.pos_enc_at_attn else tgt2
            output = output + _rope_attention(layer.self_attn, q, q, tgt2, self.cos, self.sin, None, None)
            tgt2 = layer.norm2(output)
            q = tgt2 + curr_pos if layer.pos_enc_at_cross_attn_queries else tgt2
            with_pos = layer.pos_enc_at_cross_attn_keys
            k_mem = mem + mem_pos if with_pos else mem
            k_ptr = ptr_tokens + ptr_pos if with_pos else ptr_tokens
            cross = layer.cross_attn_image
            output = output + _rope_attention(cross, q, k_mem, values, self.cos, self.sin, k_ptr, bias)
            tgt2 = layer.norm3(output)
            output = output + layer.linear2(layer.activation(layer.linear1(tgt2)))
        out = attention.norm(output)
        return out.transpose(1, 2).reshape(batch, channels, EMBED_SIZE, EMBED_SIZE)


class MemoryEncoder(nn.Module):
    def __init__(self, sam2_model: Any) -> None:
        super().__init__()
        self.model: Any = sam2_model

    def forward(
        self, image_embed: Tensor, mask_logits: Tensor, object_score_logits: Tensor, binarize: Tensor
    ) -> Tensor:
        model = self.model
        pix_feat = image_embed - model.no_mem_embed.reshape(1, -1, 1, 1)
        high_res = F.interpolate(mask_logits, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        hard = binarize.reshape(-1, 1, 1, 1) > 0.5
        mask = torch.where(hard, (high_res > 0).to(high_res.dtype), torch.sigmoid(high_res))
        if model.sigmoid_scale_for_mem_enc != 1.0:
            mask = mask * model.sigmoid_scale_for_mem_enc
        if model.sigmoid_bias_for_mem_enc != 0.0:
            mask = mask + model.sigmoid_bias_for_mem_enc
        features = model.memory_encoder(pix_feat, mask, skip_mask_sigmoid=True)["vision_features"]
        if model.no_obj_embed_spatial is not None:
            absent = 1.0 - (object_score_logits > 0).to(features.dtype)  # [B, 1]
            features = features + absent[..., None, None] * model.no_obj_embed_spatial[..., None, None]
        return features


class TrackDecoder(MaskHeads):
    def __init__(self, sam2_model: Any) -> None:
        super().__init__(sam2_model)
        self.model: Any = sam2_model

    def _point_bias(self, labels: Tensor, dtype: torch.dtype) -> Tensor:
        return torch.where(labels == MASKED_LABEL, _MASKED, 0.0).to(dtype)

    def forward(
        self,
        pix_feat: Tensor,
        high_res_feats_0: Tensor,
        high_res_feats_1: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        model = self.model
        masks, iou_pred, mask_tokens, score_token = self.decode(
            pix_feat, high_res_feats_0, high_res_feats_1, point_coords, point_labels, mask_input, has_mask_input
        )
        batch = pix_feat.shape[0]
        if score_token is None:
            score = torch.full((batch, 1), 10.0)  # SAM 2's "always present" without an object-score head
        else:
            score = self.mask_decoder.pred_obj_score_head(score_token)
        ptrs = model.obj_ptr_proj(mask_tokens)  # [B, 4, 256]
        if model.pred_obj_scores:
            appearing = score > 0
            masks = torch.where(appearing[:, :, None, None], masks, torch.full_like(masks, NO_OBJECT_SCORE))
            lam = score.sigmoid() if model.soft_no_obj_ptr else appearing.to(ptrs.dtype)
            lam = lam[:, :, None]
            if model.fixed_no_obj_ptr:
                ptrs = lam * ptrs
            ptrs = ptrs + (1 - lam) * model.no_obj_ptr
        return masks, iou_pred, ptrs, score
