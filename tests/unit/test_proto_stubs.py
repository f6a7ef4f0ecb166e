from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_committed_stubs_are_what_the_pinned_command_generates(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run([str(ROOT / "tools" / "gen_proto.sh"), str(tmp_path)], check=True, env=env)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    # reranker.v1 and tei.v1: pb2, pyi, grpc and package markers each, in the api package.
    assert {p.parts[0] for p in generated} == {"api"}
    assert len(generated) >= 12
    for relative in generated:
        committed = ROOT / relative
        assert committed.read_text() == (tmp_path / relative).read_text(), relative
