"""Long-context CLIPs (a LongCLIP conversion has 248 text positions): captions are cut at the model's own
limit, never at the 77 tokens of OpenAI CLIP or of the tokenizer's ``model_max_length``.

A tiny random CLIP with 248 positions and the real CLIP tokenizer (whose tokenizer_config.json says 77)
scores a 200-token caption whole, in words, interactions and scans, and cuts a 300-token one at 248.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from test_words_oracle import oracle_word_scores
from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

from clipalign import CLIP4DM, CaptionTruncatedWarning, TokenPatchInteractions, load_model
from clipalign.cli.main import main
from clipalign.models import CheckpointError
from clipalign.runners.local import scan
from clipalign.runners.sources import Columns, table_samples
from clipalign.settings import ScanSettings
from clipalign.testing import save_random_clip, tiny_clip_config

ROOT = Path(__file__).resolve().parents[1]
LONG = 248
TEMPLATE = "A photo depicts "
VOCABULARY = [
    "a",
    "red",
    "ball",
    "on",
    "green",
    "grass",
    "under",
    "the",
    "blue",
    "sky",
    "near",
    "small",
    "white",
    "house",
    "with",
    "tall",
    "tree",
    "and",
    "dog",
]
"""Words that are one BPE token each, so a caption of n of them is n tokens."""


def caption_of(tokens: int) -> str:
    """A caption that makes ``tokens`` positions with SOT, the 3-token template and EOT."""
    return " ".join(VOCABULARY[i % len(VOCABULARY)] for i in range(tokens - 5))


def photo(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def long_dir(tmp_path_factory, tokenizer_dir):
    config = tiny_clip_config(layers=2, max_positions=LONG)
    return save_random_clip(tmp_path_factory.mktemp("long-clip"), config, tokenizer_dir, seed=3)


@pytest.fixture(scope="module")
def long_model(long_dir):
    return load_model(long_dir, device="cpu")


def test_captions_have_the_token_counts_the_tests_rely_on(long_model):
    for tokens in (200, 300):
        ids = long_model.tokenizer(TEMPLATE + caption_of(tokens)).input_ids
        assert len(ids) == tokens


def test_the_model_limit_wins_over_the_tokenizer_config(long_model):
    assert long_model.tokenizer.model_max_length == 77  # the shipped CLIP tokenizer_config.json
    assert long_model.max_text_tokens == LONG
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        [enc] = long_model.encode_captions([caption_of(200)], TEMPLATE)
    assert len(enc.input_ids) == 200 and enc.pool_index == 199 and not enc.truncated_words


def test_a_200_token_caption_scores_every_word_as_the_oracle_does(long_dir, long_model):
    caption = caption_of(200)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptionTruncatedWarning)
        [result] = CLIP4DM(long_model, layers=2).attribute([photo()], [caption], on_error="raise")
    assert result.truncated_words == []
    assert [w.word for w in result.words] == caption.split()
    assert all(w.num_tokens == 1 for w in result.words)
    model = CLIPModel.from_pretrained(long_dir, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(long_dir)
    processor = CLIPImageProcessorPil.from_pretrained(long_dir)
    expected, cosine = oracle_word_scores(model, tokenizer, processor, photo(), caption, layers=2)
    assert result.cosine == pytest.approx(cosine, abs=1e-6)
    assert [w.score for w in result.words] == pytest.approx([s for _, s in expected], abs=1e-9)
    # the words past position 77 carry the scores of their own positions, not zeros
    assert all(w.score != 0 for w in result.words[80:])


def test_a_300_token_caption_is_cut_at_the_model_limit(long_model):
    caption = caption_of(300)
    with pytest.warns(CaptionTruncatedWarning, match=f"longer than {LONG} tokens"):
        [result] = CLIP4DM(long_model, layers=2).attribute([photo()], [caption], on_error="raise")
    words = caption.split()
    kept = LONG - 5  # SOT, 3 template tokens and EOT
    assert [w.word for w in result.words] == words[:kept]
    assert result.truncated_words == words[kept:]
    assert len(result.tokens) == kept


def test_interactions_cover_all_200_tokens(long_model):
    caption = caption_of(200)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptionTruncatedWarning)
        [inter] = TokenPatchInteractions(long_model, steps=4).attribute(
            [photo()], [caption], on_error="raise"
        )
    assert inter.matrix.shape == (200 - 3, 16)  # no template for interactions: SOT + 195 words + EOT
    assert [w.word for w in inter.words] == caption.split()
    assert abs(inter.completeness.residual) < 1e-2 * max(1.0, abs(inter.completeness.target))
    assert np.abs(inter.matrix[-20:]).sum() > 0


def test_a_scan_keeps_long_captions_whole_up_to_the_model_limit(long_model, tmp_path):
    photo().save(tmp_path / "p.png")
    rows = [{"image": "p.png", "caption": caption_of(200)}, {"image": "p.png", "caption": caption_of(300)}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(CaptionTruncatedWarning, match=f"longer than {LONG} tokens"):
        scan(
            table_samples(tmp_path / "pairs.jsonl", Columns()),
            CLIP4DM(long_model, layers=2, batch_size=2),
            tmp_path / "s.parquet",
            {"model": "long"},
            options=ScanSettings(progress=False),
        )
    whole, cut = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert whole["error"] is None and len(whole["word_scores"]) == 195 and whole["truncated_words"] == []
    assert (
        len(cut["word_scores"]) == LONG - 5 and cut["truncated_words"] == caption_of(300).split()[LONG - 5 :]
    )
    [direct] = CLIP4DM(long_model, layers=2).attribute([photo()], [caption_of(200)], on_error="raise")
    assert whole["word_scores"] == pytest.approx([w.score for w in direct.words], abs=1e-6)


def test_cli_words_names_the_words_cut_at_the_model_limit(long_dir, tmp_path, capsys):
    photo().save(tmp_path / "p.png")
    caption = caption_of(300)
    code = main(
        ["words", str(tmp_path / "p.png"), caption, "--model", str(long_dir), "--layers", "2", "--json"]
    )
    assert code == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["truncated_words"] == caption.split()[LONG - 5 :]
    assert f"longer than {LONG} tokens" in captured.err


# --- tools/convert_longclip.py: a LongCLIP release (OpenAI CLIP state-dict layout) to an HF folder ---


def converter():
    spec = importlib.util.spec_from_file_location("convert_longclip", ROOT / "tools" / "convert_longclip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def openai_layout(model: CLIPModel, seed: int = 0) -> dict[str, torch.Tensor]:
    """The inverse of the conversion, written out name by name: HF ``CLIPModel`` weights in the layout of
    a LongCLIP release, the text positions split over two tables as LongCLIP keeps them (the rows each
    table does not use are filled with noise, which the conversion must ignore)."""
    hf = {k: v.detach().clone() for k, v in model.state_dict().items()}
    noise = torch.Generator().manual_seed(seed)
    positions = hf["text_model.embeddings.position_embedding.weight"]
    first = torch.randn(positions.shape, generator=noise)
    rest = torch.randn(positions.shape, generator=noise)
    first[:20], rest[20:] = positions[:20], positions[20:]
    state = {
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": first,
        "positional_embedding_res": rest,
        "ln_final.weight": hf["text_model.final_layer_norm.weight"],
        "ln_final.bias": hf["text_model.final_layer_norm.bias"],
        "text_projection": hf["text_projection.weight"].T.contiguous(),
        "logit_scale": hf["logit_scale"],
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": hf["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": hf["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": hf["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": hf["vision_model.post_layernorm.bias"],
        "visual.proj": hf["visual_projection.weight"].T.contiguous(),
    }
    towers = (
        ("transformer.", "text_model.", model.config.text_config),
        ("visual.transformer.", "vision_model.", model.config.vision_config),
    )
    for ours, theirs, config in towers:
        for i in range(config.num_hidden_layers):
            a, b = f"{ours}resblocks.{i}.", f"{theirs}encoder.layers.{i}."
            for kind in ("weight", "bias"):
                q, k, v = (hf[f"{b}self_attn.{p}_proj.{kind}"] for p in "qkv")
                state[f"{a}attn.in_proj_{kind}"] = torch.cat([q, k, v])
                state[f"{a}attn.out_proj.{kind}"] = hf[f"{b}self_attn.out_proj.{kind}"]
                state[f"{a}ln_1.{kind}"] = hf[f"{b}layer_norm1.{kind}"]
                state[f"{a}ln_2.{kind}"] = hf[f"{b}layer_norm2.{kind}"]
                state[f"{a}mlp.c_fc.{kind}"] = hf[f"{b}mlp.fc1.{kind}"]
                state[f"{a}mlp.c_proj.{kind}"] = hf[f"{b}mlp.fc2.{kind}"]
    return state


@pytest.fixture(scope="module")
def release(long_dir, tmp_path_factory):
    """The tiny 248-position CLIP written as a LongCLIP ``.pt`` (a plain state dict)."""
    path = tmp_path_factory.mktemp("release") / "longclip-tiny.pt"
    model = CLIPModel.from_pretrained(long_dir)
    torch.save({**openai_layout(model), "context_length": 248}, path)
    return path


def convert(release, tokenizer_dir, out, *extra):
    """Run the conversion tool's command line on the tiny release (4 heads of 8, not OpenAI's 64)."""
    argv = [str(release), "--tokenizer", str(tokenizer_dir), "--out", str(out), "--text-heads", "4"]
    return converter().main([*argv, "--vision-heads", "4", *extra])


def test_a_converted_release_gives_the_original_embeddings(
    long_dir, release, tokenizer_dir, tmp_path, capsys
):
    out = tmp_path / "hf"
    assert convert(release, tokenizer_dir, out) == 0
    assert f"--model {out}" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["max_position_embeddings"] == LONG
    assert config["text_config"]["hidden_act"] == config["vision_config"]["hidden_act"] == "quick_gelu"
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == LONG
    assert (out / "model.safetensors").is_file() and (out / "preprocessor_config.json").is_file()
    converted = load_model(out, device="cpu")
    original = CLIPModel.from_pretrained(long_dir, attn_implementation="eager").eval()
    pixels = converted.preprocess([photo()])
    with torch.no_grad():
        image = original.get_image_features(pixel_values=pixels).pooler_output
        assert torch.allclose(converted.image_embeddings(pixels), image, rtol=0, atol=1e-6)
        for caption in ("a red ball", caption_of(200)):
            [encoded] = converted.encode_captions([caption], TEMPLATE)
            ours = converted.text_embeddings(converted.collate([encoded])).embeds
            text = original.get_text_features(input_ids=torch.tensor([encoded.input_ids])).pooler_output
            assert torch.allclose(ours, text, rtol=0, atol=1e-6)


def test_a_release_with_more_than_tensors_needs_the_unsafe_flag(long_dir, tokenizer_dir, tmp_path, capsys):
    release = tmp_path / "training-checkpoint.pt"
    model = CLIPModel.from_pretrained(long_dir)
    torch.save({"state_dict": openai_layout(model), "args": argparse.Namespace(lr=1e-5)}, release)
    capsys.readouterr()  # the loading progress bar
    assert convert(release, tokenizer_dir, tmp_path / "refused") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--allow-unsafe-pickle" in err
    assert not (tmp_path / "refused").exists()
    with pytest.warns(UserWarning, match="full pickle"):
        assert convert(release, tokenizer_dir, tmp_path / "hf", "--allow-unsafe-pickle") == 0
    assert load_model(tmp_path / "hf", device="cpu").max_text_tokens == LONG


def test_tensors_that_map_to_nothing_are_an_error(long_dir, tokenizer_dir, tmp_path, capsys):
    state = openai_layout(CLIPModel.from_pretrained(long_dir))
    torch.save({**state, "visual.extra_head.weight": torch.zeros(2)}, tmp_path / "extra.pt")
    capsys.readouterr()  # the loading progress bar
    assert convert(tmp_path / "extra.pt", tokenizer_dir, tmp_path / "a") == 1
    assert "map to nothing in CLIPModel: ['visual.extra_head.weight']" in capsys.readouterr().err
    del state["visual.ln_post.bias"]
    torch.save(state, tmp_path / "missing.pt")
    assert convert(tmp_path / "missing.pt", tokenizer_dir, tmp_path / "b") == 1
    assert "lacks the tensor 'visual.ln_post.bias'" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert convert(tmp_path / "junk.pt", tokenizer_dir, tmp_path / "c") == 1
    assert capsys.readouterr().err.startswith("error: cannot read")


def longclip_encode_text(state: dict[str, torch.Tensor], ids: list[int], heads: int) -> torch.Tensor:
    """LongCLIP's ``encode_text`` restated on its own state dict (the reference for the inverse mapping
    above): the two position tables added under masks (first 20 rows, the rest), OpenAI CLIP's
    pre-norm blocks with ``nn.MultiheadAttention`` and quick GELU, pooled at EOT, times text_projection."""
    n = len(ids)
    first = torch.zeros(LONG, 1)
    first[:20] = 1
    positions = state["positional_embedding"] * first + state["positional_embedding_res"] * (1 - first)
    x = state["token_embedding.weight"][ids] + positions[:n]
    width = x.shape[-1]
    causal = torch.full((n, n), float("-inf")).triu(1)
    blocks = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    for i in range(blocks):
        p = f"transformer.resblocks.{i}."
        attention = torch.nn.MultiheadAttention(width, heads)
        attention.load_state_dict(
            {k[len(p) + 5 :]: v for k, v in state.items() if k.startswith(p + "attn.")}, strict=True
        )
        h = torch.nn.functional.layer_norm(x, (width,), state[p + "ln_1.weight"], state[p + "ln_1.bias"])
        x = x + attention(h[:, None], h[:, None], h[:, None], attn_mask=causal, need_weights=False)[0][:, 0]
        h = torch.nn.functional.layer_norm(x, (width,), state[p + "ln_2.weight"], state[p + "ln_2.bias"])
        h = torch.nn.functional.linear(h, state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)
        x = x + torch.nn.functional.linear(h, state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
    x = torch.nn.functional.layer_norm(x, (width,), state["ln_final.weight"], state["ln_final.bias"])
    return x[ids.index(max(ids))] @ state["text_projection"]


def test_the_release_layout_is_longclips_own(long_dir, long_model):
    """The test's release, run through LongCLIP's text forward, gives the HF model's text embeddings: the
    inverse mapping the conversion is checked against is the layout LongCLIP reads."""
    state = openai_layout(CLIPModel.from_pretrained(long_dir))
    for caption in ("a red ball", caption_of(200)):
        [encoded] = long_model.encode_captions([caption], TEMPLATE)
        with torch.no_grad():
            ours = long_model.text_embeddings(long_model.collate([encoded])).embeds[0]
            reference = longclip_encode_text(state, encoded.input_ids, heads=4)
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_a_conversion_whose_config_forgets_the_248_positions_is_refused(long_dir, tmp_path):
    """A LongCLIP folder whose config.json does not name its positions reads as 77: the 248-row table
    does not fit, and loading stops instead of cutting captions at 77 with half a position table."""
    folder = shutil.copytree(long_dir, tmp_path / "forgot")
    config = json.loads((folder / "config.json").read_text())
    del config["text_config"]["max_position_embeddings"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"wrong shape .*position_embedding.weight: \(248, 32\) vs \(77, 32\)"
    ):
        load_model(folder, device="cpu")
