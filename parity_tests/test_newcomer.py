"""What a newcomer meets first: ``dir(nnparity)``, ``nnparity list``, and source documents cited
by title (the repository has no ``seeds/`` folder to point at)."""

from pathlib import Path

import nnparity
from nnparity.training.networks import NETWORKS

ROOT = Path(__file__).resolve().parents[1]


def test_dir_shows_the_lazy_api():
    names = dir(nnparity)
    assert {"check_layer", "check_loss", "check_steps"} <= set(names)
    assert names == sorted(names)


def test_list_names_source_documents_not_seed_numbers(cli_process):
    proc = cli_process.run(["list"], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "seed 0" not in out and "seeds 0" not in out
    assert out.count("source document:") == len(NETWORKS)


def test_sources_are_cited_by_title_not_by_a_missing_path():
    for name, net in NETWORKS.items():
        assert "seeds/" not in net.recipe.source and ".txt" not in net.recipe.source, name
    for report in ROOT.glob("reports/*/report.md"):
        assert "seeds/" not in report.read_text(encoding="utf-8"), report
