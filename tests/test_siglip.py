"""SigLIP and SigLIP 2 (fixed resolution) on tiny random ``SiglipModel`` checkpoints with tokenizers trained
here, offline: SigLIP's SentencePiece ``spiece.model`` and SigLIP 2's Gemma BPE.

The oracles restate the procedures plainly, from HF's ``SiglipModel`` forward and the tokenizer alone:
captions padded to 64 tokens with the pad token as the checkpoints were trained, no attention mask,
the embedding read at the last position, and words found by tokenizing growing prefixes of the text
(the tokens a word adds are its tokens), not by the library's offsets.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import SiglipModel
from transformers.models.siglip import modeling_siglip

from clipalign import CLIP4DM, load_model
from clipalign.attribution.interactions import TokenPatchInteractions
from clipalign.attribution.quadrature import quadrature
from clipalign.cli.main import main
from clipalign.images.geometry import box_patch_weights, grid_to_image
from clipalign.models.hf_siglip import HFSiglipAdapter, load_siglip_tokenizer, spiece_tokenizer
from clipalign.testing import save_random_siglip

TEMPLATE = "A photo depicts "
CAPTIONS = [
    "a cup of coke",
    "A snowboarder jumps over a xylophone.",
    "a street sign with a detour pointing in different directions.",
    "the dog! runs , fast",
]
ORACLE_CAPTIONS = [
    "a cup of coke",
    "A snowboarder jumps over a xylophone .",
    "a street sign with a detour pointing in different directions",
    "the dog! runs , fast",
]
"""As in tests/test_words_oracle.py, no token of these spans two words (the oracle's prefix tokenization
needs that); ``test_a_token_spanning_two_words_belongs_to_the_first`` covers those."""
CONTEXT = 64
FAMILIES = ["siglip", "siglip2"]


def scene(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, family: str):
    return save_random_siglip(tmp_path_factory.mktemp(f"tiny-{family}"), family, seed=0)


@pytest.fixture(scope="module")
def siglip(model_dir):
    return load_model(model_dir, device="cpu")


@pytest.fixture(scope="module")
def hf_model(model_dir):
    """The checkpoint straight from transformers, parameters requiring grad (so maps are in the graph)."""
    return SiglipModel.from_pretrained(model_dir, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, family: str):
    """A 2-block, 16-wide SigLIP for interactions (64 text positions make them the slow part)."""
    out = save_random_siglip(
        tmp_path_factory.mktemp(f"small-{family}"), family, seed=1, hidden_size=16, layers=2
    )
    return load_model(out, device="cpu")


PIECES = {"clip4dm": re.compile(r"[.,]|[^ .,]+"), "whitespace": re.compile(r"\S+")}


def padded_ids(tokenizer, text: str) -> torch.Tensor:
    """The tokenizer's ids with its special tokens, right-padded to 64 with its pad token."""
    ids = list(tokenizer(text)["input_ids"])
    return torch.tensor([ids + [tokenizer.pad_token_id] * (CONTEXT - len(ids))])


def oracle_word_scores(model, tokenizer, processor, image, caption, layers, unit="clip4dm"):
    """CLIP4DM for one pair with loops; the pooled row is the last one, where SiglipModel pools (and
    Siglip2Model: the image inputs are whatever the processor gives, NaFlex's mask and grid included)."""
    text = TEMPLATE + caption
    ids = padded_ids(tokenizer, text)
    out = model(input_ids=ids, **processor(images=[image], return_tensors="pt"), output_attentions=True)
    img, txt = out.image_embeds[0], out.text_embeds[0]
    cos = (img @ txt) / (img.norm() * txt.norm())
    attentions = out.text_model_output.attentions[-layers:]
    grads = torch.autograd.grad(cos, attentions)
    relevance = torch.zeros(CONTEXT, CONTEXT, dtype=torch.float64)
    for grad, attn in zip(grads, attentions, strict=True):
        heads = attn.shape[1]
        for h in range(heads):
            relevance += (grad[0, h] * attn[0, h]).double() / heads
    relevance /= layers
    row = relevance[CONTEXT - 1].detach()
    full = list(tokenizer(text)["input_ids"])
    bare = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    prefix = next(i for i in range(len(full)) if full[i : i + len(bare)] == bare)  # leading specials
    words, cursor, done = [], 0, 0
    for match in PIECES[unit].finditer(text):
        count = len(tokenizer(text[: match.end()], add_special_tokens=False)["input_ids"]) - done
        scores = [float(row[prefix + cursor + k]) for k in range(count)]
        words.append((match.group(), sum(scores) / count if count else 0.0))
        cursor, done = cursor + count, done + count
    return words[len(TEMPLATE.split()) :], float(cos.detach())


@pytest.mark.parametrize(("layers", "unit"), [(1, "clip4dm"), (3, "clip4dm"), (3, "whitespace")])
def test_library_matches_loop_oracle(siglip, hf_model, layers, unit):
    attributor = CLIP4DM(siglip, layers=layers, unit=unit)
    images = [scene(i) for i in range(len(ORACLE_CAPTIONS))]
    results = attributor.attribute(images, ORACLE_CAPTIONS, on_error="raise")
    for image, caption, result in zip(images, ORACLE_CAPTIONS, results, strict=True):
        expected, cos = oracle_word_scores(
            hf_model, siglip.tokenizer, siglip.image_processor, image, caption, layers, unit
        )
        assert [w.word for w in result.words] == [w for w, _ in expected]
        got = np.array([w.score for w in result.words])
        want = np.array([s for _, s in expected])
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
        assert result.cosine == pytest.approx(cos, abs=1e-6)


def test_captions_are_padded_to_the_context_and_pooled_at_the_last_position(siglip):
    [enc] = siglip.encode_captions(["a cup of coke"], TEMPLATE)
    assert len(enc.input_ids) == CONTEXT and enc.pool_index == CONTEXT - 1
    assert enc.input_ids == padded_ids(siglip.tokenizer, TEMPLATE + "a cup of coke")[0].tolist()
    inputs = siglip.collate([enc])
    with torch.no_grad():
        ours = siglip.text_embeddings(inputs).embeds
        theirs = siglip.model.get_text_features(input_ids=inputs.input_ids).pooler_output
    torch.testing.assert_close(ours, theirs)


def test_long_captions_are_cut_at_whole_words_within_64_tokens(siglip):
    from clipalign.text.alignment import CaptionTruncatedWarning

    caption = " ".join(["red cube"] * 60)
    with pytest.warns(CaptionTruncatedWarning, match="longer than 64 tokens"):
        [enc] = siglip.encode_captions([caption], TEMPLATE)
    assert len(enc.input_ids) == CONTEXT and enc.truncated_words
    assert enc.input_ids[-1] == siglip.tokenizer.eos_token_id  # no room left for padding
    assert enc.words[-1].end <= enc.truncated_words[0].start


def test_word_scores_are_batch_invariant(siglip):
    """A caption scored alone or among others (longer, shorter) gets the same scores: every caption is
    padded to the same 64 positions and no row sees another."""
    images = [scene(i) for i in range(len(CAPTIONS))]
    attributor = CLIP4DM(siglip, layers=2)
    batched = attributor.attribute(images, CAPTIONS, on_error="raise")
    for image, caption, together in zip(images, CAPTIONS, batched, strict=True):
        [alone] = attributor.attribute([image], [caption], on_error="raise")
        want = np.array([w.score for w in together.words])
        # fp32 rounding of batched kernels only (a leak from padding or batch-mates moves scores by >1%)
        np.testing.assert_allclose(
            [w.score for w in alone.words], want, rtol=0, atol=1e-5 * np.abs(want).max()
        )
        assert alone.cosine == pytest.approx(together.cosine, abs=1e-6)


def fp64_eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """HF's eager attention with the softmax in the input dtype (HF's is fp32), for fp64 checks."""
    logits = query @ key.transpose(-1, -2) * scaling
    weights = torch.softmax(logits if attention_mask is None else logits + attention_mask, dim=-1)
    return (weights @ value).transpose(1, 2).contiguous(), weights


def test_token_score_is_finite_difference_of_scaled_attention(siglip, model_dir, monkeypatch):
    model = SiglipModel.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float64).eval()
    adapter = HFSiglipAdapter(model, siglip.tokenizer, siglip.image_processor)
    assert_token_scores_are_finite_differences(adapter, modeling_siglip, scene(7), monkeypatch)


def assert_token_scores_are_finite_differences(adapter, modeling, image, monkeypatch):
    """Scaling the last block's attention from the pooled (last) position to token j by (1+t) in every
    head changes the cosine by t·heads·score_j (one attributed layer). ``adapter`` wraps an fp64 HF
    model whose eager attention lives in the module ``modeling``; HF's forward takes the image as its
    processor gives it (NaFlex: with mask and grid)."""
    model = adapter.model
    [enc] = adapter.encode_captions(["a red cube on a blue sphere"], TEMPLATE)
    [raw] = CLIP4DM(adapter, layers=1).attribute_tokens(adapter.preprocess([image]), [enc]).token_scores
    target = model.text_model.encoder.layers[-1].self_attn
    scale = {"t": 0.0, "j": 0}

    def perturbed(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        out, weights = fp64_eager_attention(module, query, key, value, attention_mask, scaling)
        if module is target:
            factor = torch.ones_like(weights)
            factor[:, :, -1, scale["j"]] = 1 + scale["t"]
            weights = weights * factor
            out = (weights @ value).transpose(1, 2).contiguous()
        return out, weights

    monkeypatch.setattr(modeling, "eager_attention_forward", perturbed)
    ids = torch.tensor([enc.input_ids])
    inputs = adapter.image_processor(images=[image], return_tensors="pt")
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}

    def cosine(t: float, j: int) -> float:
        scale.update(t=t, j=j)
        with torch.no_grad():
            out = model(input_ids=ids, **inputs)
        return float(torch.nn.functional.cosine_similarity(out.text_embeds, out.image_embeds)[0])

    h = 1e-5
    caption_positions = np.flatnonzero(enc.token_word >= 0)
    # the first and last caption tokens and two pads (a bidirectional encoder reads its padding)
    for j in [*caption_positions[:2], caption_positions[-1], CONTEXT - 1, CONTEXT - 5]:
        derivative = (cosine(h, int(j)) - cosine(-h, int(j))) / (2 * h)
        assert derivative == pytest.approx(target.num_heads * float(raw[j]), rel=1e-5, abs=1e-12)


def test_tokenizer_follows_the_checkpoint(siglip, model_dir, family):
    """SigLIP: lower-cased, ASCII punctuation dropped, whitespace collapsed, ``</s>`` appended (HF's
    ``SiglipTokenizer``); SigLIP 2's Gemma tokenizer as saved: no BOS, ``<eos>`` appended. Offsets point
    at the caption as written either way."""
    tok = siglip.tokenizer
    if family == "siglip":
        assert tok("A  Cup, of COKE!")["input_ids"] == tok("a cup of coke")["input_ids"]
        assert tok.convert_ids_to_tokens(tok("a")["input_ids"])[-1] == "</s>"
        assert (
            spiece_tokenizer(model_dir / "spiece.model").backend_tokenizer.to_str()
            == tok.backend_tokenizer.to_str()
        )
    else:
        assert tok("A cup")["input_ids"] != tok("a cup")["input_ids"]
        assert tok.convert_ids_to_tokens(tok("a")["input_ids"])[-1] == "<eos>"
    [enc] = siglip.encode_captions(["The DOG, runs."], "")
    for t in np.flatnonzero(enc.token_word >= 0):
        start, end = enc.token_spans[t]
        word = enc.words[enc.token_word[t]]
        assert word.start <= start < word.end and end <= len(enc.caption)
    assert [w.text for w in enc.words] == ["The", "DOG", ",", "runs", "."]


def test_a_token_spanning_two_words_belongs_to_the_first(siglip, family):
    """Gemma's BPE (as trained here) merges ``e.`` at the end of ``xylophone.``: the token is the word's,
    and ``.`` has none (SigLIP drops the ``.`` before tokenizing, with the same outcome)."""
    [result] = CLIP4DM(siglip, layers=2).attribute([scene(1)], ["a xylophone."], on_error="raise")
    xylophone, period = result.words[-2:]
    assert (xylophone.word, period.word, period.num_tokens, period.score) == ("xylophone", ".", 0, 0.0)
    tokens = [t.token for t in result.tokens if t.word == len(result.words) - 2]
    assert tokens[-1] == ("e." if family == "siglip2" else "e")


def test_spiece_tokenizer_equals_hf_siglip_tokenizer(tmp_path):
    """HF's slow ``SiglipTokenizer`` (needs ``sentencepiece``) and our fast rebuild give the same ids, on a
    SentencePiece model trained with SentencePiece's defaults (NFKC map, dummy prefix) and text that
    exercises every canonicalisation step: case, punctuation, whitespace runs, NFKC, non-ASCII."""
    spm = pytest.importorskip("sentencepiece")
    from transformers import SiglipTokenizer

    from clipalign.testing import _tokenizer_corpus

    odd = [
        "Ünïcödé café naïve",
        "ＦＵＬＬ width １２３",
        "2.5 m and 10,000 people",
        "e-mail: a@b.com (really?)",
    ]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([*_tokenizer_corpus(), *odd * 5]),
        model_prefix=str(tmp_path / "sp"),
        vocab_size=300,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    slow, fast = SiglipTokenizer(str(tmp_path / "sp.model")), spiece_tokenizer(tmp_path / "sp.model")
    texts = [
        *CAPTIONS,
        *odd,
        "  A  photo,   of a DOG!!  ",
        "don't",
        "x ▁ y",
        "tab\there\nnewline",
        "ﬁne",
        "a...b",
    ]
    for text in texts:
        assert fast(text)["input_ids"] == slow(text)["input_ids"], text


def test_gemma_tokenizer_lower_cases_when_its_config_says_so(tmp_path):
    folder = save_random_siglip(tmp_path, "siglip2")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": True}))
    tok = load_siglip_tokenizer(str(folder), True)
    assert tok("A Snowboarder")["input_ids"] == tok("a snowboarder")["input_ids"]
    encoding = tok("A Snowboarder", return_offsets_mapping=True, add_special_tokens=False)
    assert [tuple(span) for span in encoding["offset_mapping"]][-1] == (
        1,
        13,
    )  # "▁snowboarder": " Snowboarder"
    assert (
        load_siglip_tokenizer(str(folder), True).backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    )


def test_spiece_model_alone_gives_the_tokenizer(tmp_path):
    """Google's SigLIP folders hold ``spiece.model`` and no ``tokenizer.json``: the fast tokenizer is
    rebuilt from it and ``tokenizer_config.json`` alone."""
    folder = save_random_siglip(tmp_path, "siglip")
    reference = load_siglip_tokenizer(str(folder), True)
    (folder / "tokenizer.json").unlink()
    tok = load_siglip_tokenizer(str(folder), True)
    text = "A snowboarder jumps over a xylophone."
    assert tok(text, return_offsets_mapping=True) == reference(text, return_offsets_mapping=True)
    assert tok.pad_token == tok.eos_token == "</s>" and tok.model_max_length == CONTEXT


def test_a_folder_with_spiece_model_only_loads(tmp_path):
    """The local-folder file check accepts ``spiece.model`` as the tokenizer: the model loads and embeds a
    caption as the same folder with ``tokenizer.json`` does."""
    folder = save_random_siglip(tmp_path, "siglip")
    with_json = load_model(folder, device="cpu")
    (folder / "tokenizer.json").unlink()
    assert sorted(p.name for p in folder.glob("tokenizer*")) == ["tokenizer_config.json"]
    alone = load_model(folder, device="cpu")
    [enc] = alone.encode_captions(["a cup of coke"], TEMPLATE)
    [reference] = with_json.encode_captions(["a cup of coke"], TEMPLATE)
    assert (enc.input_ids, enc.token_spans) == (reference.input_ids, reference.token_spans)
    inputs = alone.collate([enc])
    assert torch.equal(alone.text_embeddings(inputs).embeds, with_json.text_embeddings(inputs).embeds)


# --- interactions ---


def oracle_matrix(adapter, image, caption, layer, nodes, weights):
    """exCLIP's formula with one backward per embedding dimension, loops over nodes, cosine heads."""
    [enc] = adapter.encode_captions([caption], "")
    ids = torch.tensor([enc.input_ids])
    ref_ids = torch.tensor([adapter.text_reference_ids(len(enc.input_ids))])
    pixels = adapter.preprocess([image])
    x, r_x = adapter.text_states(ids, layer)[0], adapter.text_states(ref_ids, layer)[0]
    zero = getattr(adapter, "reference_pixels", torch.zeros_like)(pixels)  # NaFlex: zero at the image's grid
    y, r_y = adapter.image_states(pixels, layer)[0], adapter.image_states(zero, layer)[0]

    def text(h):
        e = adapter.text_head(h[None], layer, enc.pool_index)[0]
        return e / e.norm()

    def image_embed(h):
        e = adapter.image_head(h[None], layer)[0]
        return e / e.norm()

    def integrated(fn, inp, ref):
        jac = 0
        for alpha, w in zip(nodes, weights, strict=True):
            point = (ref + float(alpha) * (inp - ref)).detach().requires_grad_(True)
            out = fn(point)
            rows = [
                torch.autograd.grad(out[d], point, retain_graph=True)[0].double() for d in range(len(out))
            ]
            jac = jac + float(w) * torch.stack(rows)
        return (jac * (inp - ref).double()[None]).sum(dim=-1)

    with torch.enable_grad():
        t, v = integrated(text, x, r_x), integrated(image_embed, y, r_y)
    return (t.T @ v).numpy()


@pytest.mark.parametrize(
    "layer", [pytest.param(0, marks=pytest.mark.slow), 1], ids=["below-the-last-block", "last-block"]
)
def test_interactions_match_per_dimension_backward_oracle(small, layer):
    """Every text position (pads included) × every patch; no class-token column (``image_prefix`` 0)."""
    assert small.image_prefix == 0
    [result] = TokenPatchInteractions(small, text_block=layer, image_block=layer, steps=3).attribute(
        scene(2, (40, 56)), "a black dog", on_error="raise"
    )
    rows, cols = small.patch_grid
    assert result.matrix.shape == (CONTEXT, rows * cols) and result.cls.size == 0
    nodes, weights = quadrature("gauss", 3)
    expected = oracle_matrix(small, scene(2, (40, 56)), "a black dog", layer, nodes, weights)
    np.testing.assert_allclose(result.matrix, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_interactions_completeness(small):
    [result] = TokenPatchInteractions(small, steps=20).attribute(scene(3), "a white husky", on_error="raise")
    c = result.completeness
    assert result.matrix.sum() + result.cls.sum() == pytest.approx(c.sum, rel=1e-9)
    assert c.target == pytest.approx(c.s_xy - c.s_x_ry - c.s_rx_y + c.s_rx_ry)
    assert abs(c.residual) <= 1e-4 * abs(c.target)
    from clipalign.metrics import image_text_cosine

    assert c.s_xy == pytest.approx(
        float(image_text_cosine(small, [scene(3)], ["a white husky"], "")[0]), abs=1e-6
    )


def test_image_head_takes_forward_mode_jvps(small, monkeypatch):
    """Interactions below the last block push forward-mode JVPs through the vision blocks and the
    attention-pooling head; they equal central finite differences (fp64)."""
    monkeypatch.setattr(modeling_siglip, "eager_attention_forward", fp64_eager_attention)
    small.model.double()
    try:
        pixels = small.preprocess([scene(4)]).double()
        states = small.image_states(pixels, 0)
        tangent = torch.randn_like(states, generator=torch.Generator().manual_seed(0))
        head = lambda h: small.image_head(h, 0)  # noqa: E731
        _, jvp = torch.func.jvp(head, (states,), (tangent,))
        eps = 1e-6
        fd = (head(states + eps * tangent) - head(states - eps * tangent)) / (2 * eps)
        torch.testing.assert_close(jvp, fd, rtol=1e-6, atol=1e-9)
    finally:
        small.model.float()


@pytest.mark.parametrize("size", [(64, 48), (48, 80), (301, 97)])
def test_heatmap_geometry_of_the_squashing_resize(siglip, size):
    """SigLIP squashes any image to its square input (no crop): a region our geometry assigns to one
    patch turns only that patch red in the model's pixels, and a one-patch heatmap covers that region
    of the original image and nothing else (nothing is cropped, so nothing is NaN)."""
    rows, cols = siglip.patch_grid
    row, col = 2, 1
    geometry = siglip.image_geometry(*size)
    assert geometry.crop_in_original() == pytest.approx((0, 0, *size))
    cw, ch = geometry.crop[2] / cols, geometry.crop[3] / rows
    (x0, x1), (y0, y1) = geometry.to_original(
        np.array([col * cw, (col + 1) * cw]), np.array([row * ch, (row + 1) * ch])
    )
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[..., 2] = 255
    pixels[int(np.ceil(y0)) : int(np.floor(y1)), int(np.ceil(x0)) : int(np.floor(x1))] = (255, 0, 0)
    model_input = siglip.preprocess([Image.fromarray(pixels)])[0]
    red = (model_input[0] > model_input[2]).float()
    patch = red.reshape(rows, red.shape[0] // rows, cols, red.shape[1] // cols).mean(dim=(1, 3))
    assert patch[row, col] > 0.6
    patch[row, col] = 0
    assert patch.max() < 0.4
    values = np.zeros((rows, cols))
    values[row, col] = 1
    heat = grid_to_image(values, geometry)
    assert not np.isnan(heat).any()
    whole = box_patch_weights((0, 0, *size), geometry, (rows, cols))
    np.testing.assert_allclose(whole, np.ones((rows, cols)))
    ys, xs = np.nonzero(heat)
    assert (
        xs.min() >= np.floor(x0)
        and xs.max() <= np.ceil(x1)
        and ys.min() >= np.floor(y0)
        and ys.max() <= np.ceil(y1)
    )


# --- loading and the command line ---


def test_load_model_picks_the_siglip_adapter(siglip):
    assert isinstance(siglip, HFSiglipAdapter)
    assert siglip.max_text_tokens == CONTEXT and siglip.num_text_layers == 4
    assert siglip.pixel_values([scene(0)]).dtype == torch.float32
    assert siglip.model.config.text_config._attn_implementation == "eager"
    pixels = siglip.preprocess([scene(0), scene(1, (30, 70))])
    with torch.no_grad():  # fused attention in every vision block gives HF's pooled output
        theirs = siglip.model.get_image_features(pixel_values=pixels).pooler_output
        torch.testing.assert_close(siglip.image_embeddings(pixels), theirs, rtol=1e-5, atol=1e-6)


def test_half_precision_autocasts_the_image_tower_only(siglip, model_dir):
    half = load_model(model_dir, device="cpu", dtype="bf16")
    assert (half.dtype, half.weight_dtype) == (torch.bfloat16, torch.float32)
    pixels = half.preprocess([scene(0)])
    assert pixels.dtype == torch.float32
    inputs = half.collate(half.encode_captions(["a cup of coke"], TEMPLATE))
    with torch.no_grad():
        torch.testing.assert_close(half.text_embeddings(inputs).embeds, siglip.text_embeddings(inputs).embeds)
        image, full = half.image_embeddings(pixels), siglip.image_embeddings(pixels)
    assert image.dtype == torch.float32 and not torch.equal(image, full)
    assert torch.nn.functional.cosine_similarity(image, full).item() > 0.999
    [result] = CLIP4DM(half, layers=2).attribute([scene(0)], ["a cup of coke"], on_error="raise")
    assert all(np.isfinite(w.score) for w in result.words)


@pytest.mark.slow
def test_cli_words_interactions_and_scan(model_dir, tmp_path, capsys):
    path = tmp_path / "dogs.png"
    scene(5, (70, 50)).save(path)
    caption = "A white husky and a black dog running."
    assert main(["words", str(path), caption, "--model", str(model_dir), "--json"]) == 0
    words = json.loads(capsys.readouterr().out)
    assert [w["word"] for w in words["words"]] == [*caption[:-1].split(), "."]
    assert -1 <= words["cosine"] <= 1 and words["model"] == str(model_dir)

    argv = ["interactions", str(path), caption, "--model", str(model_dir), "--json", "--steps", "2"]
    assert main([*argv, "--span", "black dog", "--out", str(tmp_path / "span.png")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["grid"] == [4, 4] and len(data["matrix"]) == CONTEXT and len(data["matrix"][0]) == 16
    assert np.sum(data["matrix"]) + np.sum(data["cls"]) == pytest.approx(
        data["completeness"]["sum"], rel=1e-9
    )
    assert Image.open(tmp_path / "span.png").format == "PNG"

    images = tmp_path / "images"
    images.mkdir()
    scene(5, (70, 50)).save(images / "dogs.png")
    (tmp_path / "captions.json").write_text(json.dumps({"dogs.png": caption}))
    out = tmp_path / "s.parquet"
    scan_argv = ["scan", str(images), "--captions", str(tmp_path / "captions.json"), "--out", str(out)]
    assert main([*scan_argv, "--model", str(model_dir), "--no-progress"]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(out).to_pylist()
    assert len(table) == 1 and table[0]["cosine"] == pytest.approx(words["cosine"], abs=1e-6)
    assert table[0]["word_scores"] == pytest.approx([w["score"] for w in words["words"]], abs=1e-9)
