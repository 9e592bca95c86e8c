from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentguard.cli import main


@pytest.mark.embedded
def test_positions_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["positions", "--model", "default", "--prompt", "How do I bake bread?"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"][out["t_inst"]] == "?"
    assert out["t_post_inst"] == len(out["tokens"]) - 1
    assert out["post_inst"][0] == out["t_inst"] + 1


@pytest.mark.embedded
def test_extract_and_directions_cli(
    tmp_path: Path, tmp_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"Tell me fact number {i}."}) for i in range(3)))
    argv = [
        "extract",
        "--model",
        "default",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "acts"),
        "--layers",
        "0,5",
    ]
    assert main(["-q", *argv]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["shape"] == [3, 2, 2, 576] and first["from_cache"] == 0
    meta = json.loads((tmp_path / "acts" / "meta.json").read_text())
    assert meta["positions"] == ["t_inst", "t_post_inst"] and len(meta["instructions"]) == 3
    assert main(["-q", *argv]) == 0
    assert json.loads(capsys.readouterr().out)["from_cache"] == 3
    assert (
        main(["-q", "directions", "--model", "default", "--limit", "4", "--out", str(tmp_path / "dirs")]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert len(report["cosine"]) == 31 and (tmp_path / "dirs" / "refusal.safetensors").is_file()


def test_bad_data_file_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"instruction": "\xff\xfe"}\n')
    assert (
        main(["-q", "extract", "--model", "default", "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    )
    assert "UTF-8" in capsys.readouterr().err
    missing = tmp_path / "m.jsonl"
    missing.write_text('{"text": "hi"}\n')
    assert (
        main(["-q", "extract", "--model", "default", "--data", str(missing), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "instruction" in capsys.readouterr().err


def test_run_sizes_and_threads_are_entry_point_options() -> None:
    from latentguard.analysis.study import SIZES, STAGE_DESCRIPTIONS, StudyConfig
    from latentguard.cli import build_parser
    from latentguard.cli.common import config_from_args

    args = build_parser().parse_args(["--torch-threads", "2", "run", "--size", "demo", "--no-attack"])
    cfg = config_from_args(StudyConfig, args)
    assert (args.torch_threads, cfg.size, cfg.attack, args.quick) == (2, "demo", False, False)
    assert build_parser().parse_args(["run", "--quick"]).quick
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--size", "huge"])
    picks = [StudyConfig(size=s).pick(1, 2, 3) for s in SIZES]
    assert picks == [1, 2, 3] and StudyConfig(size="demo").pick(1, 2, 3, override=9) == 9
    assert StudyConfig(size="quick").quick and not StudyConfig(size="demo").quick
    with pytest.raises(ValueError, match="size"):
        StudyConfig(size="huge")
    assert {"label", "extract", "finetune_attack", "report"} <= set(STAGE_DESCRIPTIONS)


def test_model_aliases_come_from_the_entry_point_registry() -> None:
    from latentguard.models import alias_resolvers

    resolvers = alias_resolvers()
    assert {"organism", "attacked", "gemma3-270m"} <= set(resolvers)
    assert resolvers["organism"].value == "latentguard.organism_aliases:organism_alias"
    assert resolvers["gemma3-270m"].value == "latentguard.packaged:gemma3_270m_dir"


def test_compare_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`latentguard compare` on a real quick run's summary (tests/data/summary_quick.json), twice."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(
        (Path(__file__).parent / "data" / "summary_quick.json").read_text(encoding="utf-8"), encoding="utf-8"
    )
    out = tmp_path / "cmp"
    assert main(["-q", "compare", str(run), str(run), "--labels", "a,b", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["runs"] == 2 and Path(printed["html"]).is_file()
    md = (out / "compare.md").read_text(encoding="utf-8")
    assert "| paper's claim | paper | a | b | models agree |" in md
    # the same run twice agrees with itself wherever the claim was measured
    assert "differ |" not in md
    assert main(["-q", "compare", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "cannot read the run summary" in capsys.readouterr().err
