"""`ptq3d data check | ls | synth`."""

from __future__ import annotations

from datasets_paths import SAMPLES

from ptq3d.datasets.protocols import get_protocol
from ptq3d.harness.cli import main


def test_synth_then_check_ok(tmp_path, capsys):
    assert main(["data", "synth", "eth3d", str(tmp_path), "--seeds", "1", "2", "--frames", "2",
                 "--height", "16", "--width", "24"]) == 0  # fmt: skip
    assert main(["data", "check", "eth3d", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 scenes, 4 frames readable, 0 problems" in out


def test_check_reports_broken_file(tmp_path, capsys):
    main(["data", "synth", "7scenes", str(tmp_path), "--frames", "2", "--height", "16", "--width", "24"])
    (tmp_path / "synthetic/seq-01/frame-000001.depth.proj.png").write_bytes(b"\x89PNG garbage")
    assert main(["data", "check", "7scenes", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM" in out and "frame-000001.depth.proj.png: corrupt" in out


def test_check_real_7scenes_sample_names_the_trimmed_sequence(capsys):
    # kapture's sample keeps TrainSplit.txt's 'sequence3' but not its folder
    assert main(["data", "check", "7scenes", str(SAMPLES / "7scenes")]) == 1
    out = capsys.readouterr().out
    assert "9 frames readable" in out and "names seq-03" in out


def test_unknown_dataset_exit_2(tmp_path, capsys):
    assert main(["data", "check", "co3dv2", str(tmp_path)]) == 2
    assert "did you mean 'co3d'" in capsys.readouterr().err


def test_ls_lists_protocols_with_hash(capsys):
    assert main(["data", "ls"]) == 0
    out = capsys.readouterr().out
    assert "vggt-co3d" in out and get_protocol("vggt-co3d").hash[:12] in out
