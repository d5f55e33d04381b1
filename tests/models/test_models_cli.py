"""`ptq3d models` lists the registered models with parameter counts."""

from __future__ import annotations

import json

import torch

from ptq3d.harness.cli import main
from ptq3d.models import list_models
from ptq3d.models.vggt import VGGT, VGGTConfig


def test_list_models_rows():
    rows = {r["name"]: r for r in list_models()}
    assert {"vggt-1b", "vggt-tiny", "pi3", "pi3-tiny"} <= set(rows)
    assert rows["vggt-1b"]["params"] == 1_256_537_516 - 65_941_396  # manifest total minus the track head
    assert rows["vggt-1b"]["family"] == "vggt" and rows["vggt-1b"]["description"]


def test_cli_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("vggt-1b "))
    assert "1,190,596,120" in line
    assert "vggt-tiny" in out


def test_cli_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    with torch.device("meta"):
        n = sum(p.numel() for p in VGGT(VGGTConfig.tiny()).parameters())
    assert rows["vggt-tiny"]["params"] == n
