"""README.md's examples, run as written: every fenced Python block and every command of its shell blocks.

The README names files a reader has (``photo.jpg``, ``pairs.jsonl``) and the Hub model most users want;
:data:`FILES`, :data:`MADE`, :data:`OUTPUTS` and :data:`HUB_MODEL` say what stands for them offline, and
commands that load a model without naming one get ``--model`` :data:`MODEL`. Commands that cannot run
here are in :data:`SKIPPED`, each with its reason. A new block or command that is neither runnable nor
listed fails :func:`test_every_block_is_run_or_skipped`, so the README cannot drift from the code.
Python blocks run in-process in a fresh namespace, commands in a subprocess, both from the repository
root; where the README states the output (JSON keys, files written), the test checks it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import clipalign
from clipalign.checkpoints import SYNTHETIC_CLIP
from clipalign.synthetic import write_dataset
from clipalign.testing import save_random_siglip

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MODEL = str(SYNTHETIC_CLIP)
"""What every model in the README becomes: the packaged synthetic CLIP, found offline by path."""

HUB_MODEL = re.compile(r"\bopenai/clip-vit-[\w.-]+")
"""Hub names of real CLIPs (not reachable here), replaced by :data:`MODEL`."""

HUB_SIGLIP = re.compile(r"\bgoogle/siglip2?-[\w.-]+")
"""Hub names of real SigLIP / SigLIP 2 models, replaced by a tiny random one that :func:`make_inputs`
writes (with the tokenizer of that family, trained offline)."""

FILES = {
    "photo.jpg": "examples/apple_and_cup.png",
    "dogs.jpg": "src/clipalign/examples/red_house_in_snow.png",
    "a.jpg": "examples/apple_and_cup.png",
    "b.png": "src/clipalign/examples/sailboat_at_sunset.png",
}
"""README input image → an image shipped in the repository (relative to its root)."""

MADE = {
    "pairs.jsonl": "pairs.jsonl",
    "images_dir/": "images_dir/",
    "captions.json": "captions.json",
    "shards/{00000..00099}.tar": "shards/{00000..00001}.tar",
}
"""README dataset input → what :func:`make_inputs` writes for it in the test's directory."""

EXAMPLES = Path(clipalign.__file__).parent / "examples"
PAIRS = 2
"""Image-caption pairs in each made dataset input (the first shipped examples)."""

OUTPUTS = (
    "black_dog.png",
    "grid.png",
    "coke.html",
    "coke.png",
    "scores.parquet",
    "scores/",
    "captioned.parquet",
    "f_clipscore.png",
    "synthetic-world",
    "eval-results",
)
"""README output paths → the same name in the test's directory; each must exist after its block."""

MODEL_COMMANDS = {"words", "score", "interactions", "scan", "eval", "demo"}
"""Subcommands that load a model (the default one unless ``--model`` names another)."""

SKIPPED = {
    r"pip install torch==[\d.]+": "installs torch from the package index",
    r'pip install -e "?\.\[(test|ray|demo)\]"?': "installs the project and its extras from the package index",
    r"python -m pytest -q( -m \"not slow\")?": "runs the test suite, this test included",
    r"ruff (check|format --check) src tests benchmarks tools": "a linter; .ci/run runs it before the tests",
    r"mypy src/clipalign": "the type checker; .ci/run runs it before the tests",
    r"clipalign eval (foil|nocaps-foil|hat|seetrue-feedback|richhf|pointing-(coco|flickr30k)|hnc) .*": (
        "needs the benchmark's published files; tests/test_datasets.py reads real HAT and nocaps-FOIL files"
    ),
    r"clipalign eval mismatch --annotations captions_val2014\.json .*": (
        "needs COCO's captions, instances and images; tests/test_mismatch.py reads COCO-format files"
    ),
    r"clipalign sweep foil .*": (
        "needs the FOIL files and COCO images; tests/test_sweep.py sweeps real HAT annotations"
    ),
    r"clipalign download (nocaps|richhf) .*": (
        "fetches images over the network; tests/test_download.py runs it against a local server"
    ),
    r"clipalign scan .* --engine ray .*": (
        "needs a Ray cluster with those GPUs or CPUs; tests/test_scan_ray.py runs this engine on a local Ray"
    ),
    r"clipalign demo": "a server that runs until stopped; tests/test_demo.py starts it on a free port",
    r"clipalign finetune .*": (
        "trains a model; tests/test_finetune.py runs it on tiny models (SIGKILL resume, DDP, output)"
    ),
    r"torchrun .*": "starts several processes; tests/test_finetune.py runs two gloo processes",
    r'clipalign words photo\.jpg "a cup of coke" --model my-clip/': (
        "the output of the finetune above; tests/test_finetune.py loads a fine-tuned folder with words"
    ),
    r"python tools/train_synthetic_clip\.py --family siglip": (
        "a 5-minute training run; tests/test_synthetic_siglip.py trains a tiny one and checks determinism"
    ),
    r"python benchmarks/eval_synthetic_(world|layers)\.py --model synthetic-siglip": (
        "a benchmark whose results are committed in benchmarks/results/"
    ),
}
"""Reviewed commands that are not run here (full-match patterns on the command as written) → why."""

RUN_LANGUAGES = {"", "bash", "sh", "shell", "console"}
"""Fence info strings of shell blocks; ``python`` blocks run too and ``text`` blocks are literal text."""

CONDITIONAL_KEYS = {"span": ("--span", "--words"), "box": ("--box",), "out": ("--out",)}
"""``interactions --json`` keys that are present exactly when one of these options is given."""


@dataclass(frozen=True)
class Block:
    """One fenced block of the README: its info string, text and the line of its opening fence."""

    language: str
    text: str
    line: int
    id: str
    """The section's heading as a slug and the block's number in it, e.g. ``command-line-2``."""

    def commands(self) -> list[list[str]]:
        """A shell block's commands as argument lists: comments dropped, ``\\`` lines joined, ``&&`` split."""
        commands: list[list[str]] = []
        for line in self.text.replace("\\\n", " ").splitlines():
            current: list[str] = []
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:  # not shell (unbalanced quotes): reported as a command nobody covers
                tokens = ["<not a shell command>", line]
            for token in tokens:
                if token == "&&":
                    commands.append(current)
                    current = []
                else:
                    current.append(token)
            if current:
                commands.append(current)
        return commands


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, in order."""
    blocks, lines = [], text.splitlines()
    section, number, i = "top", 0, 0
    while i < len(lines):
        if lines[i].startswith("#"):
            section, number = re.sub(r"[^a-z0-9]+", "-", lines[i].lstrip("#").lower()).strip("-"), 0
        elif lines[i].startswith("```"):
            start, language, number = i, lines[i][3:].strip(), number + 1
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            body = "\n".join(lines[start + 1 : i]) + "\n"
            blocks.append(Block(language, body, start + 1, f"{section}-{number}"))
        i += 1
    return blocks


def skip_reason(command: list[str]) -> str | None:
    """The reason :data:`SKIPPED` gives for a command as written, or None when it must run."""
    written = shlex.join(command).replace("'", '"')
    return next((why for pattern, why in SKIPPED.items() if re.fullmatch(pattern, written)), None)


def runnable(command: list[str]) -> bool:
    return command[0] in ("clipalign", "python") and skip_reason(command) is None


BLOCKS = fenced_blocks(README.read_text(encoding="utf-8"))
PYTHON_BLOCKS = [b for b in BLOCKS if b.language == "python"]
SHELL_BLOCKS = [b for b in BLOCKS if b.language in RUN_LANGUAGES and any(map(runnable, b.commands()))]


def _path_pattern(name: str) -> re.Pattern[str]:
    """``name`` as a whole path (not inside a longer name); a following ``/`` is allowed."""
    return re.compile(r"(?<![\w./{}-])" + re.escape(name) + r"(?![\w.-])")


def substitute(text: str, workdir: Path) -> str:
    """The README text with every model, input and output replaced by what stands for it here."""
    text = HUB_MODEL.sub(MODEL, text)
    text = HUB_SIGLIP.sub(lambda m: str(workdir / m.group().split("-")[0].removeprefix("google/")), text)
    table = {**{k: str(ROOT / v) for k, v in FILES.items()}, **{k: str(workdir / v) for k, v in MADE.items()}}
    table.update({name: str(workdir / name) for name in OUTPUTS})
    for name, path in table.items():
        text = _path_pattern(name).sub(path.replace("\\", "\\\\"), text)
    return text


def make_inputs(workdir: Path) -> None:
    """The dataset inputs of :data:`MADE`: :data:`PAIRS` pairs each, from the shipped example images;
    and the tiny SigLIP and SigLIP 2 models that stand for the Hub's."""
    for family in ("siglip", "siglip2"):
        save_random_siglip(workdir / family, family=family)
    examples = json.loads((EXAMPLES / "examples.json").read_text(encoding="utf-8"))[:PAIRS]
    images = [EXAMPLES / e["file"] for e in examples]
    with (workdir / "pairs.jsonl").open("w") as f:
        for image, e in zip(images, examples, strict=True):
            f.write(json.dumps({"image": str(image), "caption": e["caption"]}) + "\n")
    (workdir / "images_dir").mkdir()
    for image in images:
        shutil.copy(image, workdir / "images_dir" / image.name)
    captions = {image.name: e["caption"] for image, e in zip(images, examples, strict=True)}
    (workdir / "captions.json").write_text(json.dumps(captions))
    (workdir / "shards").mkdir()
    for n, (image, e) in enumerate(zip(images, examples, strict=True)):
        with tarfile.open(workdir / "shards" / f"{n:05d}.tar", "w") as tar:
            tar.add(image, arcname=f"{n:05d}.png")
            caption = workdir / f"{n:05d}.txt"
            caption.write_text(e["caption"])
            tar.add(caption, arcname=f"{n:05d}.txt")


def documented_keys(command: str) -> set[str]:
    """The top-level JSON keys README documents for ``clipalign COMMAND --json``.

    Either the first column of the table under the heading naming ``COMMAND --json``, or the names in
    the sentence "``COMMAND --json`` prints ..." (parenthesised remarks left out).
    """
    text = README.read_text(encoding="utf-8")
    heading = re.search(rf"^#+ .*`{command} --json`.*$", text, re.M)
    if heading:
        table = text[text.index("| --- | --- |\n", heading.end()) :].splitlines()[1:]
        cells = [row.split("|")[1] for row in itertools.takewhile(lambda r: r.startswith("|"), table)]
    else:
        sentence = re.search(rf"`{command} --json` prints (.*?)\.\s*$", text, re.S | re.M)
        assert sentence, f"README documents no JSON keys for {command} --json"
        cells = [re.sub(r"\([^)]*\)", "", sentence.group(1))]
    return {key for cell in cells for key in re.findall(r"`(\w+)`", cell)}


def check_json(argv: list[str], stdout: str) -> None:
    """A ``--json`` command printed one object with exactly the keys README documents for it."""
    command = argv[0]
    data = json.loads(stdout)
    documented = documented_keys(command)
    expected = documented
    if command == "interactions":
        expected = {
            k for k in documented if k not in CONDITIONAL_KEYS or any(o in argv for o in CONDITIONAL_KEYS[k])
        }
    assert set(data) == expected, f"{command} --json: keys {sorted(data)}, README says {sorted(expected)}"


def check_scan(out: str) -> None:
    """A scan wrote one row per input pair, none of them an error (README: "one row per input")."""
    import pyarrow.parquet as pq

    path = Path(out)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    assert [r["index"] for r in rows] == list(range(PAIRS)), out
    assert all(r["error"] is None for r in rows), [r["error"] for r in rows]


def check_outputs(text: str, workdir: Path) -> None:
    """Every output path a block names was written (PNGs and HTML checked by their first bytes)."""
    for name in OUTPUTS:
        if not _path_pattern(name).search(text):
            continue
        path = workdir / name
        assert path.exists(), f"{name} was not written"
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        if path.suffix == ".html":
            assert "<html" in path.read_text(encoding="utf-8").lower(), name


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A directory for the block's files; the block runs from the repository root and leaves it as it was."""
    make_inputs(tmp_path)
    monkeypatch.chdir(ROOT)
    before = set(os.listdir(ROOT))
    yield tmp_path
    assert set(os.listdir(ROOT)) == before, "a README example wrote into the repository root"


def test_every_block_is_run_or_skipped():
    """Each block is Python, shell or text; each shell command runs here or has a reviewed reason not to."""
    languages = {b.language for b in BLOCKS}
    assert languages <= RUN_LANGUAGES | {"python", "text"}, f"unknown fence languages: {languages}"
    commands = [c for b in BLOCKS if b.language in RUN_LANGUAGES for c in b.commands()]
    uncovered = [shlex.join(c) for c in commands if not runnable(c) and skip_reason(c) is None]
    assert not uncovered, f"README commands neither run by this test nor listed in SKIPPED: {uncovered}"
    written = [shlex.join(c).replace("'", '"') for c in commands]
    unused = [p for p in SKIPPED if not any(re.fullmatch(p, w) for w in written)]
    assert not unused, f"SKIPPED entries that match no README command (remove them): {unused}"
    text = README.read_text(encoding="utf-8")
    stale = [n for n in [*FILES, *MADE, *OUTPUTS] if not _path_pattern(n).search(text)]
    assert not stale, f"substitutions for names README no longer uses (remove them): {stale}"


def test_the_parser_finds_every_fence():
    """Sanity of :func:`fenced_blocks` on the README itself: fences pair up and every block is seen."""
    fences = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("```")]
    assert len(fences) == 2 * len(BLOCKS)
    assert PYTHON_BLOCKS and SHELL_BLOCKS


def test_public_names_are_listed():
    """README's "public names in one place" paragraph lists exactly what ``clipalign`` exports."""
    text = README.read_text(encoding="utf-8")
    paragraph = text[text.index("`clipalign` exports") : text.index("Their docstrings carry")]
    listed = {name for name in re.findall(r"`(\w+)`", paragraph) if name != "clipalign"}
    assert listed == set(clipalign.__all__) - {"__version__"}


def run_python(code: str, block: Block) -> None:
    """Run a Python block's (substituted) code in a fresh namespace, its tracebacks naming README's line."""
    exec(compile(code, f"README.md, block at line {block.line}", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.id for b in PYTHON_BLOCKS])
def test_python_block(block: Block, workdir: Path, capsys: pytest.CaptureFixture[str]):
    code = substitute(block.text, workdir)
    run_python(code, block)
    if "print(" in block.text:
        assert capsys.readouterr().out.strip(), "the block prints nothing"
    check_outputs(block.text, workdir)


HANDLES_ERRORS = [b for b in PYTHON_BLOCKS if "ItemError" in b.text]


@pytest.mark.parametrize("block", HANDLES_ERRORS, ids=[b.id for b in HANDLES_ERRORS])
def test_python_block_with_an_unreadable_image(block: Block, workdir: Path):
    """A block that handles ItemError still runs when one of its images cannot be read."""
    broken = workdir / "broken.png"
    broken.write_bytes(b"not an image")
    code = _path_pattern("b.png").sub(str(broken), block.text)
    run_python(substitute(code, workdir), block)


def test_demo_api_routes_are_listed():
    """The web demo's API bullet lists every JSON route the app serves, and says how many there are."""
    pytest.importorskip("starlette")
    from clipalign.demo.app import create_app

    app = create_app(None, "unused")  # type: ignore[arg-type]  # the routes only: no request is served
    routes = {(m, r.path) for r in app.routes if r.path.startswith("/api/") for m in r.methods - {"HEAD"}}
    text = README.read_text(encoding="utf-8")
    bullet = text[text.index("- **API.**") :].split("\n\n")[0]
    assert set(re.findall(r"`(GET|POST) (/api/\w+)`", bullet)) == routes
    numbers = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
    counts = re.findall(rf"\b({'|'.join(numbers)}) JSON routes", text)
    assert counts == [numbers[len(routes) - 1]]


@pytest.mark.slow
@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=[b.id for b in SHELL_BLOCKS])
def test_shell_block(block: Block, workdir: Path):
    if "synthetic-world/" in block.text and "write_dataset" not in block.text:
        write_dataset(workdir / "synthetic-world", n=5, seed=2)  # what README's synthetic-world block writes
    for written in block.commands():
        if not runnable(written):
            continue
        argv = shlex.split(substitute(shlex.join(written), workdir))
        if argv[0] == "clipalign":
            argv = argv[1:]
            if argv[0] in MODEL_COMMANDS and "--model" not in argv:
                argv += ["--model", MODEL]
            command = [sys.executable, "-m", "clipalign", *argv]
        else:
            command = [sys.executable, *argv[1:]]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert proc.returncode == 0, f"{shlex.join(written)}\n{proc.stderr[-3000:]}"
        if command[2:3] == ["clipalign"] and "--json" in argv:
            check_json(argv, proc.stdout)
        if command[2:3] == ["clipalign"] and argv[0] == "scan":
            check_scan(argv[argv.index("--out") + 1])
    check_outputs(block.text, workdir)
