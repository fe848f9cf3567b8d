"""The interaction references are exCLIP's: text SOT, id 0, EOT, id 0...; image all-zero normalised pixels.

exCLIP (lucasmllr/exCLIP, ``Explainer._make_txt_ref`` and ``_make_img_ref``) builds its text reference
as a 77-long row of token id 0 (CLIP's ``!``, also what OpenAI's ``clip.tokenize`` pads with), puts
SOT (49406) at position 0 and EOT (49407) at position ``text_ref_len + 1`` with ``text_ref_len = 1``,
whatever a tokenizer's pad token is. Its image reference is a zero tensor fed to ``encode_image``,
i.e. zeros after the processor's normalisation. Both are re-stated below and compared with ours.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipalign import load_model
from clipalign.attribution.interactions import TokenPatchInteractions
from clipalign.checkpoints import SYNTHETIC_CLIP
from clipalign.cli.main import main
from clipalign.models.base import TextInputs
from clipalign.testing import example_image

CAPTIONS = ["a red ball", "A white husky and a black dog running in a snow covered forest."]
EXCLIP_CONTEXT = 77


def exclip_text_reference() -> list[int]:
    """exCLIP's text reference, written out: 77 zeros, SOT at 0, EOT at text_ref_len + 1 = 2."""
    text_ref_len = 1
    ids = [0] * EXCLIP_CONTEXT
    ids[0] = 49406
    ids[text_ref_len + 1] = 49407
    return ids


@pytest.fixture(scope="module")
def synthetic():
    return load_model(SYNTHETIC_CLIP, device="cpu")


@pytest.mark.parametrize("which", ["synthetic", "adapter"])
@pytest.mark.parametrize("caption", CAPTIONS)
def test_text_reference_ids_are_exclips(request, which, caption):
    model = request.getfixturevalue(which)
    [enc] = model.encode_captions([caption], "")
    length = len(enc.input_ids)
    assert model.text_reference_ids(length) == exclip_text_reference()[:length]
    assert model.text_reference_token() == (0, "!")
    # the tokenizer pads with EOT, so the 0.1 reference was SOT followed by EOT only
    assert model.tokenizer.pad_token_id == 49407
    assert model.text_reference_ids(length, "pad") == [49406] + [49407] * (length - 1)
    assert model.text_reference_token("pad") == (49407, "<|endoftext|>")


def test_cutting_the_reference_to_the_caption_changes_nothing_at_eot(adapter):
    """exCLIP runs all 77 positions; we run the caption's length: the causal mask makes them agree."""
    [enc] = adapter.encode_captions([CAPTIONS[1]], "")
    length = len(enc.input_ids)
    full = torch.tensor([exclip_text_reference()])
    cut = torch.tensor([adapter.text_reference_ids(length)])
    for layer in (0, 2):
        prefix = adapter.text_states(full, layer)[:, :length]
        torch.testing.assert_close(prefix, adapter.text_states(cut, layer))
    torch.testing.assert_close(
        adapter.text_head(adapter.text_states(full, 1), 1, enc.pool_index),
        adapter.text_head(adapter.text_states(cut, 1), 1, enc.pool_index),
    )


def _unit(e: torch.Tensor) -> torch.Tensor:
    return e.double() / e.double().norm()


def test_completeness_terms_use_exclips_references(adapter):
    """s(r_x, y) and s(x, r_y) recomputed from exCLIP's text ids (pooled at the caption's EOT, where
    the path points are pooled) and from an all-zero normalised image."""
    caption, image = CAPTIONS[0], example_image()
    [result] = TokenPatchInteractions(adapter, steps=6).attribute([image], [caption], on_error="raise")
    [enc] = adapter.encode_captions([caption], "")
    length = len(enc.input_ids)
    ids = torch.tensor([enc.input_ids, exclip_text_reference()[:length]])
    pool = torch.tensor([enc.pool_index, enc.pool_index])
    text = adapter.text_embeddings(TextInputs(ids, torch.ones_like(ids), pool)).embeds
    pixels = adapter.preprocess([image])
    img = adapter.image_embeddings(torch.cat([pixels, torch.zeros_like(pixels)]))
    (tx, tr), (iy, ir) = [[_unit(e) for e in pair] for pair in (text, img)]
    c = result.completeness
    expected = [float(tx @ iy), float(tx @ ir), float(tr @ iy), float(tr @ ir)]
    np.testing.assert_allclose([c.s_xy, c.s_x_ry, c.s_rx_y, c.s_rx_ry], expected, atol=1e-5)
    assert abs(c.residual) < 1e-3


@pytest.mark.parametrize("normalize", ["cosine", "exclip"])
def test_pad_reference_gives_other_interactions(adapter, normalize):
    image = example_image()
    results = {
        kind: TokenPatchInteractions(adapter, steps=6, normalize=normalize, text_reference=kind).attribute(
            [image], [CAPTIONS[0]], on_error="raise"
        )[0]
        for kind in ("exclip", "pad")
    }
    for result in results.values():
        assert abs(result.completeness.residual) < 1e-3
    assert not np.allclose(results["exclip"].matrix, results["pad"].matrix, atol=1e-6)
    assert results["exclip"].completeness.s_rx_y != pytest.approx(results["pad"].completeness.s_rx_y)


def test_text_reference_is_a_setting(adapter):
    method = TokenPatchInteractions(adapter)
    assert method.settings.to_dict()["text_reference"] == "exclip"
    assert method.text_reference == {"kind": "exclip", "token_id": 0, "token": "!"}
    pad = TokenPatchInteractions(adapter, text_reference="pad")
    assert pad.text_reference == {"kind": "pad", "token_id": 49407, "token": "<|endoftext|>"}
    with pytest.raises(ValueError, match="text_reference must be one of"):
        TokenPatchInteractions(adapter, text_reference="zeros")
    with pytest.raises(ValueError, match="text reference must be one of"):
        adapter.text_reference_ids(5, "zeros")


def test_cli_json_names_the_text_reference(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "ball.png"
    example_image().save(path)
    argv = ["interactions", str(path), "a red ball", "--model", str(tiny_model_dir), "--steps", "2", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["text_reference"] == {"kind": "exclip", "token_id": 0, "token": "!"}
    assert main([*argv, "--text-reference", "pad"]) == 0
    pad = json.loads(capsys.readouterr().out)
    assert pad["text_reference"]["kind"] == "pad"
    assert not np.allclose(pad["matrix"], data["matrix"])
