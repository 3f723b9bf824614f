"""README / docs tables come from the benchmarks' results files: a stale table fails here."""

from __future__ import annotations

from benchmarks import tables


def test_generated_blocks_are_replaced_between_their_markers():
    text = "a\n<!-- generated:x -->\nold\n<!-- /generated:x -->\nb <!-- generated:y -->keep<!-- /generated:y -->"
    out = tables.render(text, {"x": "\nnew\n"})
    assert out == "a\n<!-- generated:x -->\nnew\n<!-- /generated:x -->\nb <!-- generated:y -->keep<!-- /generated:y -->"


def test_readme_and_docs_tables_match_the_results_file():
    assert tables.main(["--check"]) == 0, "run: python -m benchmarks.tables"
