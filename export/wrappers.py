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

``ImagePreparation`` and ``HeldDecoder`` are the cpu decoder's graphs for the
images it holds: what no prompt changes computed once per image, then
``PromptDecoder``'s masks from the prepared image with less work per prompt.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskserve.core.signatures import (
    EMBED_SIZE,
    ENCODER_OUTPUTS,
    LOW_RES_MASK_SIZE,
    NUM_MASK_OUTPUTS,
    PAD_LABEL,
    PREPARED_IMAGE,
)

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


def _heads(attn: Any, x: Tensor) -> Tensor:
    return attn._separate_heads(x, attn.num_heads)


def _attend(attn: Any, q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor | None) -> Tensor:
    """sam2's ``Attention.forward`` after the projections (heads separated), with an optional bias over keys [B, Nk]."""
    mask = None if key_bias is None else key_bias[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.out_proj(attn._recombine_heads(out))


def _attention(attn: Any, q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor | None) -> Tensor:
    """sam2's ``Attention.forward`` with an optional additive bias over keys [B, Nk]."""
    q, k, v = _heads(attn, attn.q_proj(q)), _heads(attn, attn.k_proj(k)), _heads(attn, attn.v_proj(v))
    return _attend(attn, q, k, v, key_bias)


def _first_projections(layer: Any, image: Tensor, image_pe: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The first layer's image side, which no prompt changes: token-to-image keys and values, image-to-token queries."""
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    with_pe = image + image_pe
    return _heads(t2i, t2i.k_proj(with_pe)), _heads(t2i, t2i.v_proj(image)), _heads(i2t, i2t.q_proj(with_pe))


def _two_way_transformer(
    transformer: Any,
    image: Tensor,
    image_pe: Tensor,
    tokens: Tensor,
    token_bias: Tensor,
    first: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """sam2's ``TwoWayTransformer.forward`` where masked tokens are never attended to.

    ``image`` and ``image_pe`` are per token ([B or 1, N, C]). Only attentions
    whose keys are tokens need the bias: token self-attention and
    image-to-token cross-attention. Masked tokens still compute their own
    rows, which nothing reads. ``first``: the first layer's image projections
    (``_first_projections``) when they were computed before, once per image.
    """
    queries, keys = tokens, image
    for i, layer in enumerate(transformer.layers):
        if layer.skip_first_layer_pe:
            queries = _attention(layer.self_attn, queries, queries, queries, token_bias)
        else:
            q = queries + tokens
            queries = queries + _attention(layer.self_attn, q, q, queries, token_bias)
        queries = layer.norm1(queries)
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        image_k, image_v, image_q = first if i == 0 and first is not None else _first_projections(layer, keys, image_pe)
        q = queries + tokens
        queries = layer.norm2(queries + _attend(t2i, _heads(t2i, t2i.q_proj(q)), image_k, image_v, None))
        queries = layer.norm3(queries + layer.mlp(queries))
        q = queries + tokens
        token_k, token_v = _heads(i2t, i2t.k_proj(q)), _heads(i2t, i2t.v_proj(queries))
        keys = layer.norm4(keys + _attend(i2t, image_q, token_k, token_v, token_bias))
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

    def _tokens(self, point_coords: Tensor, point_labels: Tensor) -> tuple[Tensor, Tensor]:
        """The transformer's tokens (output tokens, then the points) and their attention bias."""
        dec = self.mask_decoder
        batch = point_coords.shape[0]
        sparse = self._embed_points(point_coords, point_labels)
        point_bias = self._point_bias(point_labels, sparse.dtype)
        token_weights = [dec.iou_token.weight, dec.mask_tokens.weight]
        if dec.pred_obj_scores:
            token_weights.insert(0, dec.obj_score_token.weight)
        output_tokens = torch.cat(token_weights, dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
        token_bias = torch.cat([point_bias.new_zeros(batch, output_tokens.shape[0]), point_bias], dim=1)
        return tokens, token_bias

    def _dense(self, mask_input: Tensor) -> Tensor:
        """An earlier mask's dense embedding, per token [B, N, C]."""
        return self.prompt_encoder.mask_downscaling(mask_input).flatten(2).permute(0, 2, 1)

    def _no_mask(self) -> Tensor:
        """The dense embedding of a prompt without an earlier mask, per token [1, 1, C]."""
        return self.prompt_encoder.no_mask_embed.weight.reshape(1, 1, -1)

    def _image_pe(self) -> Tensor:
        return self.dense_pe.flatten(2).permute(0, 2, 1)

    def _hyper_in(self, hs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The mask tokens' hypernetwork weights [B, 4, C], the IoU predictions and the mask tokens."""
        dec = self.mask_decoder
        first = 1 if dec.pred_obj_scores else 0
        mask_tokens_out = hs[:, first + 1 : first + 1 + dec.num_mask_tokens, :]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)],
            dim=1,
        )
        return hyper_in, dec.iou_prediction_head(hs[:, first, :]), mask_tokens_out

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
        tokens, token_bias = self._tokens(point_coords, point_labels)
        with_mask = has_mask_input.reshape(batch, 1, 1) > 0.5
        src = image_embed.flatten(2).permute(0, 2, 1) + torch.where(with_mask, self._dense(mask_input), self._no_mask())
        hs, src = _two_way_transformer(dec.transformer, src, self._image_pe(), tokens, token_bias)
        hyper_in, iou_pred, mask_tokens_out = self._hyper_in(hs)

        c, h, w = ENCODER_OUTPUTS[0].dims
        src = src.transpose(1, 2).reshape(batch, c, h, w)
        dc1, ln1, act1, dc2, act2 = dec.output_upscaling
        up = act1(ln1(dc1(src) + high_res_feats_1))
        up = act2(dc2(up) + high_res_feats_0)
        c = up.shape[1]
        size = LOW_RES_MASK_SIZE
        masks = (hyper_in @ up.reshape(batch, c, size * size)).reshape(batch, NUM_MASK_OUTPUTS, size, size)
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


_BLOCKS = (EMBED_SIZE, PREPARED_IMAGE[4].dims[-1], PREPARED_IMAGE[5].dims[-1])
"""The upscaling's blocks: per side, and the channels after the first and the second upscaling."""


def _block_weight(conv: Any) -> Tensor:
    """A 2x2 stride-2 transposed convolution as a matrix [C_in, 2 * 2 * C_out]: a pixel's 2x2 block, channels last."""
    if tuple(conv.kernel_size) != (2, 2) or tuple(conv.stride) != (2, 2):
        raise ValueError("the decoder's upscaling is expected to be 2x2 transposed convolutions of stride 2")
    return conv.weight.permute(0, 2, 3, 1).reshape(conv.in_channels, -1)


class ImagePreparation(MaskHeads):
    """An image's embeddings → the held decoder's prepared image (``sig.PREPARED_IMAGE``), once per image.

    The first transformer layer's image projections do not depend on the
    prompt (only on the image, its no-mask embedding and the positional
    encoding), so they are computed here once instead of for every prompt. The
    high-resolution features are laid out in the order the upscaling's matrix
    products produce their pixels, their biases added: the held decoder reads
    them with no transpose.
    """

    def forward(self, image_embed: Tensor, high_res_feats_0: Tensor, high_res_feats_1: Tensor) -> tuple[Tensor, ...]:
        dec = self.mask_decoder
        n = image_embed.shape[0]
        e, c1, c0 = _BLOCKS
        tokens = image_embed.flatten(2).permute(0, 2, 1) + self._no_mask()
        keys, values, queries = _first_projections(dec.transformer.layers[0], tokens, self._image_pe())
        dc1, _, _, dc2, _ = dec.output_upscaling
        # channels last, each pixel's row in the order the upscaling's products make them (rank 6 at most: OpenVINO's
        # CPU plugin got rank-8 outputs wrong)
        blocks_1 = high_res_feats_1.reshape(n, c1, e, 2, e, 2).permute(0, 2, 4, 3, 5, 1).reshape(n, -1, c1)
        rows = high_res_feats_0.reshape(n, c0, e, 4, e, 4).permute(0, 2, 4, 3, 5, 1)  # [i, j, 2a + c, 2b + d, ch]
        blocks_0 = rows.reshape(n * e * e, 2, 2, 2, 2, c0).permute(0, 1, 3, 2, 4, 5).reshape(n, -1, c0)
        prepared = (tokens, keys, values, queries, blocks_1 + dc1.bias, blocks_0 + dc2.bias)
        # static per-item shapes from the signature, so the graph declares them
        return tuple(t.reshape(n, *spec.dims) for t, spec in zip(prepared, PREPARED_IMAGE, strict=True))


class HeldDecoder(MaskHeads):
    """``PromptDecoder`` on a prepared image (``ImagePreparation``): the same masks, less work per prompt.

    The first layer's image projections come prepared. The upscaling's
    transposed convolutions are matrix products over each pixel's channels,
    their 2x2 blocks kept apart until the masks are laid out at the end, so
    nothing of image size is transposed per prompt. ``with_masks``: the graph
    also takes earlier masks (``mask_input``, ``has_mask_input``); their dense
    embedding's difference from the no-mask one is projected per prompt (the
    projections are linear), which only that graph pays for.
    """

    def __init__(self, sam2_model: Any, with_masks: bool) -> None:
        super().__init__(sam2_model)
        self.with_masks = with_masks

    def forward(
        self,
        image_tokens: Tensor,
        first_keys: Tensor,
        first_values: Tensor,
        first_queries: Tensor,
        high_res_blocks_1: Tensor,
        high_res_blocks_0: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        *masks: Tensor,
    ) -> tuple[Tensor, Tensor]:
        dec = self.mask_decoder
        batch = point_coords.shape[0]
        tokens, token_bias = self._tokens(point_coords, point_labels)
        first = (first_keys, first_values, first_queries)
        if self.with_masks:
            mask_input, has_mask_input = masks
            with_mask = has_mask_input.reshape(batch, 1, 1) > 0.5
            delta = torch.where(with_mask, self._dense(mask_input) - self._no_mask(), 0.0)
            image_tokens = image_tokens + delta
            layer = dec.transformer.layers[0]
            t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
            first = (
                first_keys + _heads(t2i, F.linear(delta, t2i.k_proj.weight)),
                first_values + _heads(t2i, F.linear(delta, t2i.v_proj.weight)),
                first_queries + _heads(i2t, F.linear(delta, i2t.q_proj.weight)),
            )
        hs, keys = _two_way_transformer(dec.transformer, image_tokens, self._image_pe(), tokens, token_bias, first)
        hyper_in, iou_pred, _ = self._hyper_in(hs)

        e, c1, c0 = _BLOCKS
        dc1, ln1, act1, dc2, act2 = dec.output_upscaling
        up = (keys @ _block_weight(dc1)).reshape(batch, -1, c1) + high_res_blocks_1  # rows (i, j, a, b)
        up = act1(F.layer_norm(up, (c1,), ln1.weight, ln1.bias, ln1.eps))
        up = act2((up @ _block_weight(dc2)).reshape(batch, -1, c0) + high_res_blocks_0)  # rows (i, j, a, b, c, d)
        by_row = (up @ hyper_in.transpose(1, 2)).transpose(1, 2)  # [B, 4, rows]
        size = LOW_RES_MASK_SIZE
        # row (i, j, a, b, c, d) is pixel (4i + 2a + c, 4j + 2b + d): [i, j, a, b, c, d] → [i, a, c, j, b, d]
        by_pixel = by_row.reshape(batch * NUM_MASK_OUTPUTS * e, e, 2, 2, 2, 2).permute(0, 2, 4, 1, 3, 5)
        return by_pixel.reshape(batch, NUM_MASK_OUTPUTS, size, size), iou_pred
