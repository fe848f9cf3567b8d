"""CLIP4DM word scores against a plain re-statement of the paper and against finite differences.

The oracle below is written from the paper's description only: one pair at a time, HF's own
``output_attentions`` and pooling, explicit loops over layers and heads, and words found by tokenizing
each word on its own (no offset mapping), as the authors' code does: their unit (split on spaces, "."
and "," words of their own) or whitespace chunks. (None of these captions has a BPE token spanning two
words, where that re-encoding goes wrong: tests/test_authors_clip4dm.py covers those.)
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel
from transformers.models.clip import modeling_clip

from clipalign import CLIP4DM
from clipalign.models import HFCLIPAdapter, hf_clip

TEMPLATE = "A photo depicts "
CAPTIONS = [
    "a cup of coke",
    "A snowboarder jumps over a xylophone.",
    "a street sign with a detour pointing in different directions.",
    "the dog! runs , fast",
]


def scene(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


PIECES = {"clip4dm": re.compile(r"[.,]|[^ .,]+"), "whitespace": re.compile(r"\S+")}


def oracle_word_scores(model, tokenizer, processor, image, caption, layers, unit="clip4dm"):
    """CLIP4DM for one pair, as the paper states it, with loops."""
    text = TEMPLATE + caption
    ids = tokenizer(text, return_tensors="pt").input_ids
    pixels = processor(images=[image], return_tensors="pt").pixel_values
    out = model(input_ids=ids, pixel_values=pixels, output_attentions=True)
    img = out.image_embeds[0]
    txt = out.text_embeds[0]
    cos = (img @ txt) / (img.norm() * txt.norm())
    attentions = out.text_model_output.attentions[-layers:]
    grads = torch.autograd.grad(cos, attentions)
    n = ids.shape[1]
    relevance = torch.zeros(n, n, dtype=torch.float64)
    for grad, attn in zip(grads, attentions, strict=True):
        heads = attn.shape[1]
        layer_map = torch.zeros(n, n, dtype=torch.float64)
        for h in range(heads):
            layer_map += (grad[0, h] * attn[0, h]).double()
        relevance += layer_map / heads
    relevance /= layers
    eot = n - 1
    token_scores = [float(relevance[eot, j].detach()) for j in range(1, eot)]
    words, cursor = [], 0
    for word in PIECES[unit].findall(text):
        count = len(tokenizer(word, add_special_tokens=False).input_ids)
        words.append((word, sum(token_scores[cursor : cursor + count]) / count))
        cursor += count
    assert cursor == len(token_scores)
    return words[len(TEMPLATE.split()) :], float(cos.detach())


@pytest.fixture(scope="module")
def parts(tiny_model_dir):
    model = CLIPModel.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    return (
        model,
        AutoTokenizer.from_pretrained(tiny_model_dir),
        CLIPImageProcessorPil.from_pretrained(tiny_model_dir),
    )


@pytest.mark.parametrize(
    ("layers", "unit"), [(1, "clip4dm"), (3, "clip4dm"), (4, "clip4dm"), (3, "whitespace")]
)
def test_library_matches_loop_oracle(parts, layers, unit):
    model, tokenizer, processor = parts
    attributor = CLIP4DM(HFCLIPAdapter(model, tokenizer, processor), layers=layers, unit=unit)
    images = [scene(i) for i in range(len(CAPTIONS))]
    results = attributor.attribute(images, CAPTIONS)
    for image, caption, result in zip(images, CAPTIONS, results, strict=True):
        expected, cos = oracle_word_scores(model, tokenizer, processor, image, caption, layers, unit)
        assert result.unit == unit
        assert [w.word for w in result.words] == [w for w, _ in expected]
        got = np.array([w.score for w in result.words])
        want = np.array([s for _, s in expected])
        scale = np.abs(want).max()
        assert scale > 0
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)
        assert result.cosine == pytest.approx(cos, abs=1e-6)


def test_token_score_is_finite_difference_of_scaled_attention(parts, monkeypatch):
    """Scaling layer L's EOT→token j attention by (1+t) in every head changes the cosine by
    t·Σ_h (∂s/∂A ⊙ A)[h, EOT, j] = t·heads·score_j when only the last layer is used."""
    model, tokenizer, processor = parts
    model = CLIPModel.from_pretrained(
        model.name_or_path, attn_implementation="eager", dtype=torch.float64
    ).eval()
    attributor = CLIP4DM(HFCLIPAdapter(model, tokenizer, processor), layers=1)
    image, caption = scene(7), "a red cube on a blue sphere"
    [result] = attributor.attribute([image], [caption])
    ids = tokenizer(TEMPLATE + caption, return_tensors="pt").input_ids
    pixels = processor(images=[image], return_tensors="pt").pixel_values.double()
    eot = ids.shape[1] - 1
    target = model.text_model.encoder.layers[-1].self_attn
    scale = {"t": 0.0, "j": 0}

    def perturbed(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        # HF's eager attention, but with the softmax in fp64 (HF's is fp32) so differences are exact enough
        logits = query @ key.transpose(-1, -2) * scaling
        weights = torch.softmax(logits if attention_mask is None else logits + attention_mask, dim=-1)
        if module is target:
            factor = torch.ones_like(weights)
            factor[:, :, eot, scale["j"]] = 1 + scale["t"]
            weights = weights * factor
        return (weights @ value).transpose(1, 2).contiguous(), weights

    monkeypatch.setattr(modeling_clip, "eager_attention_forward", perturbed)

    def cosine(t: float, j: int) -> float:
        scale.update(t=t, j=j)
        with torch.no_grad():
            out = model(input_ids=ids, pixel_values=pixels)
        return float(torch.nn.functional.cosine_similarity(out.text_embeds, out.image_embeds)[0])

    heads = target.num_heads
    assert cosine(0.0, 0) == pytest.approx(result.cosine, abs=1e-6)
    first = 1 + len(tokenizer(TEMPLATE, add_special_tokens=False).input_ids)
    h = 1e-5
    for k, token in enumerate(result.tokens):
        j = first + k
        derivative = (cosine(h, j) - cosine(-h, j)) / (2 * h)
        assert derivative == pytest.approx(heads * token.score, rel=1e-5, abs=1e-12)


def full_graph_token_scores(model, tokenizer, processor, images, captions, layers, image=None):
    """The EOT rows as clipalign 0.2 computed them, restated: one batched HF forward with every activation
    differentiable from the first block up, the full (B, heads, T, T) product ∂s/∂A ⊙ A for each
    attributed layer, averaged over heads then layers, and only then the EOT row read."""
    texts = [TEMPLATE + c for c in captions]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    eot = batch.attention_mask.sum(dim=1) - 1
    pixels = processor(images=images, return_tensors="pt").pixel_values
    if image is None:
        with torch.no_grad():
            image = model.get_image_features(pixel_values=pixels).pooler_output
    assert all(p.requires_grad for p in model.parameters())  # so every activation is in the graph
    out = model.text_model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_attentions=True
    )
    pooled = out.last_hidden_state[torch.arange(len(texts)), eot]
    cosine = torch.nn.functional.cosine_similarity(model.text_projection(pooled), image)
    maps = out.attentions[-layers:]
    grads = torch.autograd.grad(cosine.sum(), maps)
    full = torch.stack([(g * a).mean(dim=1) for g, a in zip(grads, maps, strict=True)]).mean(dim=0)
    return full[torch.arange(len(texts)), eot], eot


@pytest.mark.parametrize("layers", [1, 2, 4])
def test_only_the_attributed_layers_and_the_eot_row_give_the_same_numbers(parts, adapter, layers):
    """Differentiating only the last ``layers`` blocks, running the blocks below on fused attention and
    forming only the EOT row changes no score beyond fp32 rounding: 2.5e-6 of the largest against the
    full-graph eager computation on the same image embedding (the fused kernel sums in another order:
    1.4e-6 measured; in fp64 the two agree to 1e-6, see the next test); 5e-6 against the loop oracle,
    whose pair-at-a-time forward and eager vision tower round differently (the full-graph batched
    computation itself is 2.3e-6 from it on these pairs)."""
    model, tokenizer, processor = parts
    images = [scene(i) for i in range(len(CAPTIONS))]
    attributor = CLIP4DM(adapter, layers=layers)
    encoded = [e.with_unit("clip4dm") for e in adapter.encode_captions(CAPTIONS, TEMPLATE)]
    pixels = adapter.preprocess(images)
    raw = attributor.attribute_tokens(pixels, encoded)
    with torch.no_grad():
        image = adapter.image_embeddings(pixels)
    full, eot = full_graph_token_scores(model, tokenizer, processor, images, CAPTIONS, layers, image)
    for b, enc in enumerate(encoded):
        assert enc.pool_index == eot[b]
        want = full[b, : eot[b] + 1].detach().numpy()
        got = raw.token_scores[b, : eot[b] + 1].numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=2.5e-6 * np.abs(want).max())
    results = attributor.attribute(images, CAPTIONS)
    for image, caption, result in zip(images, CAPTIONS, results, strict=True):
        expected, _ = oracle_word_scores(model, tokenizer, processor, image, caption, layers)
        want = np.array([s for _, s in expected])
        got = [w.score for w in result.words]
        np.testing.assert_allclose(got, want, rtol=0, atol=5e-6 * np.abs(want).max())


@pytest.mark.parametrize("layers", [1, 2])
def test_fused_lower_blocks_equal_the_full_graph_in_fp64(tiny_model_dir, layers):
    """In fp64 the fused-attention blocks and the eager full graph give the same EOT rows to 1e-6 of the
    largest (what remains is the fp32 accumulation of ∂s/∂A ⊙ A), so the fp32 gap above is rounding."""
    model = CLIPModel.from_pretrained(tiny_model_dir, attn_implementation="eager").eval().double()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    processor = CLIPImageProcessorPil.from_pretrained(tiny_model_dir)
    adapter = HFCLIPAdapter(model.requires_grad_(False), tokenizer, processor)
    images = [scene(i) for i in range(len(CAPTIONS))]
    encoded = adapter.encode_captions(CAPTIONS, TEMPLATE)
    pixels = adapter.preprocess(images)
    raw = CLIP4DM(adapter, layers=layers).attribute_tokens(pixels, encoded)
    with torch.no_grad():
        image = adapter.image_embeddings(pixels)
    model.requires_grad_(True)
    full, eot = full_graph_token_scores(model, tokenizer, processor, images, CAPTIONS, layers, image)
    for b in range(len(encoded)):
        want = full[b, : eot[b] + 1].detach().numpy()
        np.testing.assert_allclose(
            raw.token_scores[b, : eot[b] + 1].numpy(), want, rtol=0, atol=1e-6 * np.abs(want).max()
        )


@pytest.mark.parametrize("layers", [1, 3])
def test_blocks_below_the_attributed_ones_build_no_graph(adapter, layers):
    """Asked for n maps, the adapter returns the last n, differentiable, and the states entering every
    block below them are not part of any graph."""
    inputs = adapter.collate(adapter.encode_captions(CAPTIONS, TEMPLATE))
    entering: list[bool] = []
    blocks = adapter.model.text_model.encoder.layers
    handles = [
        block.layer_norm1.register_forward_pre_hook(lambda _m, args: entering.append(args[0].requires_grad))
        for block in blocks
    ]
    try:
        with torch.enable_grad():
            out = adapter.text_embeddings(inputs, output_attentions=layers)
    finally:
        for handle in handles:
            handle.remove()
    assert out.attentions is not None and len(out.attentions) == layers
    assert all(a.requires_grad for a in out.attentions)
    depth = adapter.num_text_layers
    assert entering == [False] * (depth - layers) + [True] * layers
    with pytest.raises(ValueError, match="output_attentions"):
        adapter.text_embeddings(inputs, output_attentions=depth + 1)


@pytest.mark.parametrize("causal", [True, False])
def test_fused_block_is_the_hf_block(parts, causal):
    """A block on fused attention computes what HF's eager block computes: in fp64 to 1e-7 (HF's eager
    softmax runs in fp32 even for fp64 models, so that is its rounding, not a difference in the math)."""
    model = parts[0]
    tower = (model.text_model if causal else model.vision_model).double()
    try:
        states = torch.randn(
            3, 9, tower.config.hidden_size, dtype=torch.float64, generator=torch.manual_seed(0)
        )
        mask = hf_clip._causal_mask(9, torch.float64, states.device) if causal else None
        with torch.no_grad():
            for block in tower.encoder.layers:
                torch.testing.assert_close(
                    hf_clip._fused_block(block, states, causal), block(states, mask), rtol=0, atol=1e-7
                )
    finally:
        tower.float()


def test_both_towers_load_eager_attention(adapter):
    """Text: its maps are the attribution's input; vision: forward-mode JVPs of its blocks (interactions
    below the last block) need an attention PyTorch can differentiate forward, which SDPA is not on CPU.
    Blocks whose maps are not read (image embeddings, text blocks below the attributed ones) run fused
    attention through ``_fused_block`` instead."""
    assert adapter.model.config.text_config._attn_implementation == "eager"
    assert adapter.model.config.vision_config._attn_implementation == "eager"
