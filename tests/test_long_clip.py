"""Long-context CLIPs (a LongCLIP conversion has 248 text positions): captions are cut at the model's own
limit, never at the 77 tokens of OpenAI CLIP or of the tokenizer's ``model_max_length``.

A tiny random CLIP with 248 positions and the real CLIP tokenizer (whose tokenizer_config.json says 77)
scores a 200-token caption whole, in words, interactions and scans, and cuts a 300-token one at 248.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_words_oracle import oracle_word_scores
from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

from clipalign import CLIP4DM, CaptionTruncatedWarning, TokenPatchInteractions, load_model
from clipalign.cli.main import main
from clipalign.runners.local import scan
from clipalign.runners.sources import Columns, table_samples
from clipalign.settings import ScanSettings
from clipalign.testing import save_random_clip, tiny_clip_config

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
