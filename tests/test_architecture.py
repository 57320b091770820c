"""The shape of the package: imports run one way along the data path (the import-linter contracts in
pyproject.toml), and a member is added to a family by adding its file, with no other edit."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    """Layers along the data path, no cycles, pruners independent of deploy, each heavy library in
    its one module: `lint-imports` (import-linter's command) passes. A failure shows its report."""
    out = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                          "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_a_member_is_one_file_with_no_other_edit(tmp_path):
    """Drop a new file into a copy of the package's pruners/ and protocols/ folders: the registries
    list the new members, and a scenario can name them, without touching any other file."""
    copy = tmp_path / "swap_hw"
    shutil.copytree(ROOT / "swap_hw", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "pruners" / "keep_first.py").write_text(textwrap.dedent('''
        import torch
        from .base import PRUNERS, Pruner, SolveOutput

        @PRUNERS.register("keep_first")
        class KeepFirst(Pruner):
            """Keep the first k weights (a test member)."""
            needs_gradients = False

            def _solve(self, w_bar, grads, k, layout):
                mask = torch.zeros(w_bar.numel(), dtype=torch.bool)
                mask[:k] = True
                return SolveOutput(w=w_bar, mask=mask)
    '''))
    (copy / "protocols" / "twice.py").write_text(textwrap.dedent('''
        from .base import PROTOCOLS
        from .one_shot import OneShot

        @PROTOCOLS.register("twice")
        class Twice(OneShot):
            """One-shot, under another name (a test member)."""
    '''))
    script = textwrap.dedent('''
        from swap_hw.config import parse_scenario_text
        from swap_hw.pruners import PRUNERS
        from swap_hw.protocols import PROTOCOLS
        assert "keep_first" in PRUNERS.names() and "twice" in PROTOCOLS.names()
        s = parse_scenario_text("pruners: [keep_first, magnitude]\\nsparsities: [0.5]\\nprotocol: twice\\n", "x.yaml")
        print([p.name for p in s.pruners], s.protocol.name)
    ''')
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['keep_first', 'magnitude'] twice"
