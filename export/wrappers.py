"""The two graphs we export, written over a built SAM 2 model's own modules.

``ImageEncoder`` is the image predictor's ``set_image`` after the transforms:
``forward_image`` (with the ``conv_s0``/``conv_s1`` projections it applies),
``no_mem_embed`` added to the lowest-resolution map, features reshaped to NCHW.

``PromptDecoder`` is the predictor's ``_predict`` before upsampling: prompt
encoder plus mask decoder, for a fixed number of point slots so that Triton can
batch requests from different clients. SAM 2's predictor always appends exactly
one padding point (label -1) to the prompt; the graph keeps the first label -1
slot as that token and masks every further one out of the attention, which is
exactly equivalent to leaving those slots out (a test proves it). It returns all
four mask tokens' logits and IoU predictions; choosing among them
(:func:`maskserve.core.masks.select_mask`) is cheap and stays outside the graph.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskserve.core.signatures import ENCODER_OUTPUTS, LOW_RES_MASK_SIZE, NUM_MASK_OUTPUTS, PAD_LABEL

_MASKED = -1e30  # additive attention bias that removes a key (exp underflows to 0)


class ImageEncoder(nn.Module):
    def __init__(self, sam2_model: Any) -> None:
        super().__init__()
        self.model: Any = sam2_model  # sam2's modules are untyped

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        model = self.model
        backbone_out = model.forward_image(image)
        _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
        if model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
        batch = image.shape[0]
        # static per-item shapes from the signature, so the graph declares them
        embed_spec, s0_spec, s1_spec = ENCODER_OUTPUTS
        s0, s1, embed = (
            feat.permute(1, 2, 0).reshape(batch, *spec.dims)
            for feat, spec in zip(vision_feats, (s0_spec, s1_spec, embed_spec), strict=False)
        )
        return embed, s0, s1


def _attention(attn: Any, q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor | None) -> Tensor:
    """sam2's ``Attention.forward`` with an optional additive bias over keys [B, Nk]."""
    q = attn._separate_heads(attn.q_proj(q), attn.num_heads)
    k = attn._separate_heads(attn.k_proj(k), attn.num_heads)
    v = attn._separate_heads(attn.v_proj(v), attn.num_heads)
    mask = None if key_bias is None else key_bias[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.out_proj(attn._recombine_heads(out))


def _two_way_transformer(
    transformer: Any, image: Tensor, image_pe: Tensor, tokens: Tensor, token_bias: Tensor
) -> tuple[Tensor, Tensor]:
    """sam2's ``TwoWayTransformer.forward`` where masked tokens are never attended to.

    Only attentions whose keys are tokens need the bias: token self-attention
    and image-to-token cross-attention. Masked tokens still compute their own
    rows, which nothing reads.
    """
    image = image.flatten(2).permute(0, 2, 1)
    image_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries, keys = tokens, image
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = _attention(layer.self_attn, queries, queries, queries, token_bias)
        else:
            q = queries + tokens
            queries = queries + _attention(layer.self_attn, q, q, queries, token_bias)
        queries = layer.norm1(queries)
        q, k = queries + tokens, keys + image_pe
        queries = layer.norm2(queries + _attention(layer.cross_attn_token_to_image, q, k, keys, None))
        queries = layer.norm3(queries + layer.mlp(queries))
        q, k = queries + tokens, keys + image_pe
        keys = layer.norm4(keys + _attention(layer.cross_attn_image_to_token, k, q, queries, token_bias))
    q, k = queries + tokens, keys + image_pe
    queries = queries + _attention(transformer.final_attn_token_to_image, q, k, keys, None)
    return transformer.norm_final_attn(queries), keys


class MaskHeads(nn.Module):
    """SAM 2's prompt encoder and mask decoder, every mask token kept (the image and the video decoders)."""

    def __init__(self, sam2_model: Any) -> None:
        super().__init__()
        self.prompt_encoder: Any = sam2_model.sam_prompt_encoder  # sam2's modules are untyped
        self.mask_decoder: Any = sam2_model.sam_mask_decoder
        self.dense_pe: Tensor
        self.register_buffer("dense_pe", self.prompt_encoder.get_dense_pe(), persistent=False)

    def _embed_points(self, coords: Tensor, labels: Tensor) -> Tensor:
        pe = self.prompt_encoder
        emb = pe.pe_layer.forward_with_coords(coords + 0.5, pe.input_image_size)
        lab = labels.unsqueeze(-1)
        emb = torch.where(lab == PAD_LABEL, torch.zeros_like(emb) + pe.not_a_point_embed.weight, emb)
        for value, table in enumerate(pe.point_embeddings):
            emb = torch.where(lab == value, emb + table.weight, emb)
        return emb

    def _point_bias(self, labels: Tensor, dtype: torch.dtype) -> Tensor:
        """The image predictor's rule: the first PAD_LABEL slot is its padding token, further ones are unused."""
        is_pad = labels == PAD_LABEL
        first_pad = is_pad & (torch.cumsum(is_pad.to(torch.int32), dim=1) == 1)
        return torch.where(is_pad & ~first_pad, _MASKED, 0.0).to(dtype)

    def decode(
        self,
        image_embed: Tensor,
        high_res_feats_0: Tensor,
        high_res_feats_1: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """All four masks' logits, their IoU predictions, the mask tokens and the object-score token (or None).

        The image tensors carry one item per prompt, or a single item that every
        prompt shares (broadcast: many prompts on one image copy nothing).
        """
        dec = self.mask_decoder
        batch = point_coords.shape[0]
        sparse = self._embed_points(point_coords, point_labels)
        point_bias = self._point_bias(point_labels, sparse.dtype)

        with_mask = has_mask_input.reshape(batch, 1, 1, 1) > 0.5
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = torch.where(with_mask, self.prompt_encoder.mask_downscaling(mask_input), no_mask)

        token_weights = [dec.iou_token.weight, dec.mask_tokens.weight]
        if dec.pred_obj_scores:
            token_weights.insert(0, dec.obj_score_token.weight)
        output_tokens = torch.cat(token_weights, dim=0)
        first = 1 if dec.pred_obj_scores else 0
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
        token_bias = torch.cat([point_bias.new_zeros(batch, output_tokens.shape[0]), point_bias], dim=1)

        src = image_embed + dense
        pos = self.dense_pe.expand(batch, -1, -1, -1)
        hs, src = _two_way_transformer(dec.transformer, src, pos, tokens, token_bias)
        iou_token_out = hs[:, first, :]
        mask_tokens_out = hs[:, first + 1 : first + 1 + dec.num_mask_tokens, :]

        c, h, w = ENCODER_OUTPUTS[0].dims
        src = src.transpose(1, 2).reshape(batch, c, h, w)
        dc1, ln1, act1, dc2, act2 = dec.output_upscaling
        up = act1(ln1(dc1(src) + high_res_feats_1))
        up = act2(dc2(up) + high_res_feats_0)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)],
            dim=1,
        )
        c = up.shape[1]
        size = LOW_RES_MASK_SIZE
        masks = (hyper_in @ up.reshape(batch, c, size * size)).reshape(batch, NUM_MASK_OUTPUTS, size, size)
        iou_pred = dec.iou_prediction_head(iou_token_out)
        return masks, iou_pred, mask_tokens_out, hs[:, 0, :] if dec.pred_obj_scores else None


class PromptDecoder(MaskHeads):
    def forward(
        self,
        image_embed: Tensor,
        high_res_feats_0: Tensor,
        high_res_feats_1: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> tuple[Tensor, Tensor]:
        masks, iou_pred, _, _ = self.decode(
            image_embed, high_res_feats_0, high_res_feats_1, point_coords, point_labels, mask_input, has_mask_input
        )
        return masks, iou_pred
