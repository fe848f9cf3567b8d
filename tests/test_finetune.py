"""``clipalign finetune``: the objective restated plainly, the L2 pull's gradient, frozen parameters,
determinism, bad items, the output checkpoint, SIGKILL resume, data parallelism, the shifted world.

Every run is a tiny random CLIP (``clipalign.testing``) on a few synthetic scenes, a few steps long."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipalign import load_model
from clipalign.cli.main import main as clipalign
from clipalign.synthetic import COLORS, SHIFTED_COLORS, caption_holds, generate_scenes, write_dataset
from clipalign.testing import save_random_clip, save_random_siglip, tiny_clip_config
from clipalign.training import DataSpec, Evaluation, FinetuneSettings, finetune
from clipalign.training.loop import lr_factor
from clipalign.training.objective import add_l2_init_grad, clip_loss, l2_init_penalty, sigmoid_loss
from clipalign.training.towers import family, hf_model, image_features, text_features

SRC = Path(__file__).resolve().parents[1] / "src"
FAST = {"progress": False, "workers": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthetic scenes at 32 px and their true captions as a JSONL table (train.jsonl)."""
    root = tmp_path_factory.mktemp("ft-data")
    annotations = write_dataset(root, 24, seed=5, image_size=32)
    scenes = json.loads(annotations.read_text())["scenes"]
    rows = [{"image": f"images/{s['file_name']}", "caption": s["caption"]} for s in scenes]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clipalign.checkpoints import SYNTHETIC_CLIP

    config = tiny_clip_config(layers=2)
    return save_random_clip(tmp_path_factory.mktemp("ft-model"), config, SYNTHETIC_CLIP, seed=0)


def train(data: Path, model_dir: Path, out: Path, *, evaluations=(), overwrite=False, **settings):
    """A few steps on the 24 scenes; returns (result, the trained adapter)."""
    model = load_model(model_dir, device="cpu")
    options = FinetuneSettings(**{"batch_size": 8, "lr": 1e-3, **FAST, **settings})
    spec = DataSpec(source=str(data / "train.jsonl"))
    result = finetune(spec, model, out, settings=options, evaluations=evaluations, overwrite=overwrite)
    return result, model


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


# --- the objective, restated -------------------------------------------------------------------------


def test_clip_loss_is_the_symmetric_infonce() -> None:
    torch.manual_seed(0)
    image, text, scale = torch.randn(5, 7), torch.randn(5, 7), torch.tensor(2.3)
    n = len(image)
    cos = [
        [float(image[i] @ text[j] / (image[i].norm() * text[j].norm())) for j in range(n)] for i in range(n)
    ]
    t = math.exp(2.3)
    image_to_text = [
        -math.log(math.exp(t * cos[i][i]) / sum(math.exp(t * cos[i][j]) for j in range(n))) for i in range(n)
    ]
    text_to_image = [
        -math.log(math.exp(t * cos[j][j]) / sum(math.exp(t * cos[i][j]) for i in range(n))) for j in range(n)
    ]
    expected = (sum(image_to_text) / n + sum(text_to_image) / n) / 2
    assert clip_loss(image, text, scale).item() == pytest.approx(expected, rel=1e-5)
    # CLIP's temperature is clamped at 100
    big = clip_loss(image, text, torch.tensor(math.log(500.0)))
    assert big.item() == pytest.approx(clip_loss(image, text, torch.tensor(math.log(100.0))).item(), rel=1e-6)


def test_sigmoid_loss_is_siglips_pairwise_loss() -> None:
    torch.manual_seed(1)
    image, text = torch.randn(4, 6), torch.randn(4, 6)
    scale, bias = torch.tensor(1.7), torch.tensor(-3.0)
    n, t = len(image), math.exp(1.7)
    total = 0.0
    for i in range(n):
        for j in range(n):
            cos = float(image[i] @ text[j] / (image[i].norm() * text[j].norm()))
            label = 1.0 if i == j else -1.0
            total += math.log(1 + math.exp(-label * (t * cos - 3.0)))
    assert sigmoid_loss(image, text, scale, bias).item() == pytest.approx(total / n, rel=1e-5)


def test_l2_init_gradient_is_the_penalty_gradient() -> None:
    """λ·Σ‖θ − θ₀‖² (exCLIP's sum of squares): the added gradient is autograd's and a finite difference."""
    torch.manual_seed(2)
    initial = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    params = [(p + 0.1 * torch.randn_like(p)).requires_grad_(True) for p in initial]
    weight = 0.37
    penalty = weight * sum(((p - p0) ** 2).sum() for p, p0 in zip(params, initial, strict=True))
    expected = torch.autograd.grad(penalty, params)
    add_l2_init_grad(params, initial, weight)
    for p, g in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, g)
    assert l2_init_penalty(params, initial, weight) == pytest.approx(penalty.item())
    h = 1e-6
    with torch.no_grad():
        params[0][1, 2] += h
        up = l2_init_penalty(params, initial, weight)
        params[0][1, 2] -= 2 * h
        down = l2_init_penalty(params, initial, weight)
    assert (up - down) / (2 * h) == pytest.approx(params[0].grad[1, 2].item(), rel=1e-5)


def test_learning_rate_warms_up_then_follows_a_cosine() -> None:
    assert [lr_factor(s, 10, 2, 0.1) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, 10, 2, 0.1) == pytest.approx(1.0)
    assert lr_factor(6, 10, 2, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(10, 10, 2, 0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_training_embeddings_are_the_adapters(kind: str, model_dir: Path, tmp_path: Path) -> None:
    """The towers as trained give the embeddings the scorers read (same pooling, same preprocessing)."""
    path = model_dir if kind == "clip" else save_random_siglip(tmp_path / "siglip", layers=2)
    model = load_model(path, device="cpu")
    net = hf_model(model)
    assert family(model) == kind
    from clipalign.testing import example_image

    captions = ["a red ball", "a small blue square on the left of the picture"]
    inputs = model.collate(model.encode_captions(captions, "A photo depicts "))
    pixels = model.preprocess([example_image(), example_image(40, 60)])
    with torch.no_grad():
        torch.testing.assert_close(image_features(net, kind, pixels), model.image_embeddings(pixels))
        trained = text_features(net, kind, inputs.input_ids, inputs.attention_mask, inputs.pool_index)
        torch.testing.assert_close(trained, model.text_embeddings(inputs).embeds)


# --- training runs ------------------------------------------------------------------------------------


def test_a_run_learns_and_writes_a_checkpoint_every_command_loads(
    data: Path, model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result, model = train(data, model_dir, out, epochs=4, l2_init=0.01, warmup=2)
    assert result.steps == 4 * (24 // 8) and result.pairs == 4 * 24 and result.skipped.total == 0
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log]
    assert sum(losses[-3:]) < sum(losses[:3])
    assert all(r["l2_init"] > 0 and r["pairs_per_s"] > 0 for r in log)
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "curves.png"} <= {
        p.name for p in out.iterdir()
    }
    reloaded = load_model(out, device="cpu")
    for name, value in hf_model(model).state_dict().items():
        assert torch.equal(hf_model(reloaded).state_dict()[name], value), name
    image = data / "images" / "000001.png"
    assert (
        clipalign(["words", str(image), "a red circle", "--model", str(out), "--layers", "2", "--json"]) == 0
    )


def test_frozen_parameters_do_not_move(data: Path, model_dir: Path, tmp_path: Path) -> None:
    before = weights(model_dir)
    train(data, model_dir, tmp_path / "out", max_steps=3, freeze=("vision", "text:1", "logit"))
    after = weights(tmp_path / "out")
    frozen = [n for n in before if n.startswith(("vision_model.", "visual_projection."))]
    frozen += [n for n in before if n.startswith(("text_model.embeddings.", "text_model.encoder.layers.0."))]
    frozen += ["logit_scale"]
    moving = [n for n in before if n not in frozen]
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    assert any(not torch.equal(before[n], after[n]) for n in moving)
    assert all(n.startswith(("text_model.", "text_projection.")) for n in moving)


def test_bad_freeze_entries_are_refused(data: Path, model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--freeze takes"):
        train(data, model_dir, tmp_path / "a", freeze=("audio",))
    with pytest.raises(ValueError, match="has 2 blocks"):
        train(data, model_dir, tmp_path / "b", freeze=("vision:3",))


def test_same_seed_same_weights_other_seed_other_weights(data: Path, model_dir: Path, tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train(data, model_dir, tmp_path / name, max_steps=3, seed=seed)
    a, b, c = (weights(tmp_path / name) for name in "abc")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_bad_items_are_skipped_and_counted(data: Path, model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines = (data / "train.jsonl").read_text().splitlines()
    lines += [
        json.dumps({"image": "images/nope.png", "caption": "a missing image"}),
        json.dumps({"image": str(tmp_path / "broken.png"), "caption": "a broken image"}),
        json.dumps({"image": "images/000002.png", "caption": "   "}),
        json.dumps({"caption": "no image column"}),
        "{not json",
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    # relative image paths resolve against the data folder (scan's --base-dir)
    spec = DataSpec(source=str(tmp_path / "train.jsonl"), base_dir=str(data))
    model = load_model(model_dir, device="cpu")
    settings = FinetuneSettings(batch_size=2, epochs=1, **FAST)
    result = finetune(spec, model, tmp_path / "out", settings=settings)
    # 26 rows are usable as written (3 refused up front); batches of 2 use all 26, and the 2 images fail
    assert result.skipped.total == 5 and result.steps == 13
    assert 22 <= result.pairs <= 24  # a batch left with one pair has no negative and is not trained on
    reasons = " ".join(result.skipped.examples)
    assert "no such file" in reasons and "caption is empty" in reasons and "invalid JSON" in reasons


def test_resuming_with_other_settings_is_refused(data: Path, model_dir: Path, tmp_path: Path) -> None:
    train(data, model_dir, tmp_path / "out", max_steps=2)
    with pytest.raises(ValueError, match="lr differ"):
        train(data, model_dir, tmp_path / "out", max_steps=2, lr=5e-4)
    result, _ = train(data, model_dir, tmp_path / "out", max_steps=2, lr=5e-4, overwrite=True)
    assert result.resumed_from is None and result.steps == 2


def test_evaluation_during_training_logs_curves_and_changes_nothing(
    data: Path, model_dir: Path, tmp_path: Path
) -> None:
    from clipalign.evaluation.benchmark import load_items

    items = load_items("pointing-synthetic", data / "annotations.json", data / "images", limit=3)
    words = load_items("synthetic", data / "annotations.json", data / "images", limit=5)
    from clipalign.settings import WordSettings

    evaluations = [
        Evaluation("pointing-synthetic", items),
        Evaluation("synthetic", words, words=WordSettings(layers=2)),
    ]
    train(data, model_dir, tmp_path / "plain", max_steps=3, seed=1)
    train(data, model_dir, tmp_path / "evaluated", max_steps=3, seed=1, eval_every=2, evaluations=evaluations)
    plain, evaluated = weights(tmp_path / "plain"), weights(tmp_path / "evaluated")
    assert all(torch.equal(plain[n], evaluated[n]) for n in plain)
    log = [json.loads(line) for line in (tmp_path / "evaluated" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval" in r]
    assert [r["step"] for r in evals] == [0, 2, 3]  # the starting model, every 2 steps, the end
    for record in evals:
        assert 0 <= record["eval"]["pointing-synthetic"]["accuracy"] <= 1
        assert 0 <= record["eval"]["synthetic"]["LA"] <= 1
    assert (tmp_path / "evaluated" / "curves.png").stat().st_size > 0
    assert (tmp_path / "evaluated" / "eval" / "step-00000002" / "pointing-synthetic").is_dir()


def test_cli_trains_and_reports_bad_arguments_in_one_line(
    data: Path, model_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "cli"
    evaluation = (
        f"pointing-synthetic --annotations {data / 'annotations.json'} --images {data / 'images'} --limit 2"
    )
    argv = [
        "finetune",
        str(data / "train.jsonl"),
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert clipalign([*argv, "--batch-size", "8", "--max-steps", "2", "--eval", evaluation]) == 0
    printed = capsys.readouterr().out
    assert "2 steps, 16 pairs" in printed and f"--model {out}" in printed
    assert load_model(out, device="cpu") is not None
    assert clipalign([*argv, "--overwrite", "--eval", "pointing-synthetic --images nowhere"]) == 1
    assert clipalign([*argv, "--overwrite", "--batch-size", "8", "--freeze", "vision,ears"]) == 1
    assert (
        clipalign(["finetune", str(tmp_path / "none.jsonl"), "--out", str(out), "--model", str(model_dir)])
        == 1
    )
    errors = capsys.readouterr().err
    assert "--freeze takes" in errors and "input not found" in errors


def test_siglip_trains_with_the_sigmoid_loss(tmp_path: Path, data: Path) -> None:
    path = save_random_siglip(tmp_path / "siglip", layers=2)
    model = load_model(path, device="cpu")
    settings = FinetuneSettings(batch_size=8, max_steps=2, lr=1e-3, **FAST)
    result = finetune(DataSpec(source=str(data / "train.jsonl")), model, tmp_path / "out", settings=settings)
    assert result.steps == 2 and math.isfinite(result.final_loss or math.nan)
    before, after = load_file(str(path / "model.safetensors")), weights(tmp_path / "out")
    assert not torch.equal(before["logit_bias"], after["logit_bias"])  # SigLIP's bias is trained too
    assert load_model(tmp_path / "out", device="cpu").max_text_tokens == model.max_text_tokens


# --- a killed run resumes exactly; two processes train as one -------------------------------------------

RUN = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from clipalign import load_model
    from clipalign.training import DataSpec, FinetuneSettings, finetune
    from clipalign.training.distributed import init_from_env
    init_from_env("cpu")  # under torchrun: join the gloo process group
    data, model_dir, out, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    def stop(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    settings = FinetuneSettings(
        batch_size=8, epochs=3, lr=1e-3, l2_init=0.05, warmup=2, save_every=2, progress=False, workers=1
    )
    model = load_model(model_dir, device="cpu")
    finetune(DataSpec(source=data), model, out, settings=settings, on_step=stop)
    """
)


def run_script(tmp_path: Path, *argv: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    script = tmp_path / "run.py"
    script.write_text(RUN)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, *launcher, str(script), *argv]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_weights(
    data: Path, model_dir: Path, tmp_path: Path
) -> None:
    source = str(data / "train.jsonl")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run_script(tmp_path, source, str(model_dir), str(whole), "0").returncode == 0
    first = run_script(tmp_path, source, str(model_dir), str(killed), "5")
    assert first.returncode == -9, first.stderr  # SIGKILL at step 5, after the checkpoint of step 4
    assert (killed / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    assert not (killed / "model.safetensors").exists()
    second = run_script(tmp_path, source, str(model_dir), str(killed), "0")
    assert second.returncode == 0, second.stderr
    a, b = weights(whole), weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    logs = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (whole, killed)]
    assert [r["step"] for r in logs[1]] == list(range(1, 10))  # steps 5.. logged once, by the resumed run
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_same_global_batch(
    data: Path, model_dir: Path, tmp_path: Path
) -> None:
    """torchrun with 2 CPU processes (gloo), 4 pairs each: the loss curve and the weights of one process
    with batches of 8, to float rounding."""
    source = str(data / "train.jsonl")
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_script(tmp_path, source, str(model_dir), str(one), "0").returncode == 0
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    result = run_script(tmp_path, source, str(model_dir), str(two), "0", launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two)]
    assert [r["step"] for r in logs[1]] == [r["step"] for r in logs[0]] == list(range(1, 10))
    for a, b in zip(logs[0], logs[1], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5) and b["pairs"] == a["pairs"] == 8
        assert (a["processes"], b["processes"]) == (1, 2)
    wa, wb = weights(one), weights(two)
    # a key bias adds the same amount to every logit of a query, which the softmax ignores: its gradient is
    # rounding noise, which Adam scales up to steps of the learning rate's size, differently in each run
    for name in (n for n in wa if not n.endswith("k_proj.bias")):
        torch.testing.assert_close(wb[name], wa[name], atol=1e-5, rtol=1e-4, msg=name)


# --- the shifted synthetic world ------------------------------------------------------------------------


def test_the_shifted_world_has_new_colours_and_the_same_layouts() -> None:
    default, shifted = generate_scenes(40, 9), generate_scenes(40, 9, world="shifted")
    assert default == generate_scenes(40, 9, world="default")
    assert not set(SHIFTED_COLORS) & set(COLORS)
    for a, b in zip(default, shifted, strict=True):
        assert [(o.shape, o.size, o.position, o.center) for o in a.objects] == [
            (o.shape, o.size, o.position, o.center) for o in b.objects
        ]
        assert all(o.color in SHIFTED_COLORS for o in b.objects)
        assert caption_holds(b, b.caption)
        for foil in b.foils:
            assert not caption_holds(b, foil.caption)
            if foil.kind == "color":
                assert foil.foil in SHIFTED_COLORS
    with pytest.raises(ValueError, match="unknown synthetic world"):
        generate_scenes(1, 0, world="mars")


def test_a_shifted_dataset_records_its_world(tmp_path: Path) -> None:
    default = json.loads(write_dataset(tmp_path / "d", 2, seed=1, image_size=32).read_text())
    shifted = json.loads(write_dataset(tmp_path / "s", 2, seed=1, image_size=32, world="shifted").read_text())
    assert "world" not in default and shifted["world"] == "shifted"
    assert shifted["vocabulary"]["color"] == list(SHIFTED_COLORS)
    assert shifted["vocabulary"]["shape"] == default["vocabulary"]["shape"]


def test_mixed_precision_needs_a_gpu(data: Path, model_dir: Path, tmp_path: Path) -> None:
    model = load_model(model_dir, device="cpu")
    with pytest.raises(ValueError, match="mixed precision on a CUDA GPU"):
        finetune(DataSpec(source=str(data / "train.jsonl")), model, tmp_path / "out", dtype="bf16")


def test_a_finished_run_started_again_changes_nothing(data: Path, model_dir: Path, tmp_path: Path) -> None:
    train(data, model_dir, tmp_path / "out", max_steps=2)
    first = weights(tmp_path / "out")
    result, _ = train(data, model_dir, tmp_path / "out", max_steps=2)
    assert result.resumed_from == 2 and result.steps == 2
    again = weights(tmp_path / "out")
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_finetune_help_is_light() -> None:
    from test_startup import heavy_modules_after, help_code

    assert heavy_modules_after(help_code("finetune")) == []


def test_accumulation_sums_micro_batches_into_one_step(data: Path, model_dir: Path, tmp_path: Path) -> None:
    result, _ = train(data, model_dir, tmp_path / "out", batch_size=4, accumulate=2, epochs=1)
    log = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert result.steps == 24 // 8 and [r["pairs"] for r in log] == [8, 8, 8]


def test_tar_shards_train_like_a_table(data: Path, model_dir: Path, tmp_path: Path) -> None:
    """scan's webdataset input: one shard of PNG + TXT members."""
    import io
    import tarfile

    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    with tarfile.open(tmp_path / "shard-0.tar", "w") as tar:
        for i, row in enumerate(rows):
            for suffix, payload in (
                ("png", (data / row["image"]).read_bytes()),
                ("txt", row["caption"].encode()),
            ):
                info = tarfile.TarInfo(f"{i:04d}.{suffix}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    model = load_model(model_dir, device="cpu")
    settings = FinetuneSettings(batch_size=8, max_steps=2, **FAST)
    result = finetune(
        DataSpec(source=str(tmp_path / "shard-{0..0}.tar")), model, tmp_path / "out", settings=settings
    )
    assert result.steps == 2 and result.pairs == 16 and result.skipped.total == 0
