"""Mixed-precision plans: bits per block (or per linear site) on top of a base scheme.

A plan names the units that differ from the base scheme; everything it does not name keeps the base. An entry
changes bits only: granularity, symmetry, group size and static/dynamic activations stay those of the base
(so "w4a8-static" with a block at "w8" gives that block W8 per-channel weights and A8 static per-tensor inputs).

Entries are bit strings:
- "w<b>"          weights at b bits, activations as the base scheme;
- "w<b>a<b>"      both; "a16" keeps that unit's activations floating point.
Keys: `blocks` uses block names as `GeometryModel.blocks(scope)` gives them ("aggregator.frame_blocks.3");
`sites` uses full linear names ("aggregator.frame_blocks.3.attn.qkv"); a site entry wins over its block's.

On disk (TOML or JSON):

    name = "budget-4.5"
    [blocks]
    "aggregator.global_blocks.0" = "w8"
    [sites]
    "aggregator.frame_blocks.1.mlp.fc2" = "w8a8"
    [source]           # free provenance: who made it and how
    made_by = "ptq3d sensitivity"
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptq3d.errors import ConfigError

if TYPE_CHECKING:
    from ptq3d.quant.spec import Scheme

_ENTRY_RE = re.compile(r"^w(\d+)(?:a(\d+))?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def parse_entry(entry: str, where: str = "plan entry") -> tuple[int, int | None]:
    """(weight bits, activation bits or None for "as the base") of "w<b>[a<b>]"; a16 -> activation bits 16."""
    m = _ENTRY_RE.match(str(entry).strip().lower())
    if not m:
        raise ConfigError(f"{where}: {entry!r} is not a bit string like 'w8' or 'w8a8'")
    wb = int(m.group(1))
    ab = None if m.group(2) is None else int(m.group(2))
    if not 2 <= wb <= 8:
        raise ConfigError(f"{where}: weight bits {wb} not in 2..8 (codes are stored as int8)")
    if ab is not None and not 2 <= ab <= 16:
        raise ConfigError(f"{where}: activation bits {ab} not in 2..16")
    return wb, ab


@dataclass(frozen=True)
class PrecisionPlan:
    """Bit overrides per block and per site (module docstring). source: provenance, free-form JSON."""

    name: str
    blocks: dict[str, str] = field(default_factory=dict)
    sites: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigError(
                f"plan name {self.name!r}: use letters, digits, '.', '_' or '-' (it becomes part of the scheme name)"
            )
        for kind in ("blocks", "sites"):
            table = getattr(self, kind)
            if not isinstance(table, dict):
                raise ConfigError(f"plan '{self.name}': [{kind}] must be a table of name = \"w<b>[a<b>]\"")
            for key, entry in table.items():
                parse_entry(entry, f"plan '{self.name}' {kind}.{key}")
        if not self.blocks and not self.sites:
            raise ConfigError(
                f"plan '{self.name}' names no block and no site (it would equal the base scheme)"
            )

    # --- resolution ------------------------------------------------------------------------------
    def entry_for(self, site: str | None, block: str | None) -> str | None:
        """The entry that applies to `site` (full linear name) in `block`, or None (base scheme)."""
        if site is not None and site in self.sites:
            return self.sites[site]
        if block is not None and block in self.blocks:
            return self.blocks[block]
        return None

    def check_names(self, block_names: list[str], site_names: list[str]) -> None:
        """ConfigError naming every plan key that is not a block / site of the model in scope: a typo would
        otherwise leave that unit at the base bits without a word."""
        bad = [f"blocks.{k}" for k in self.blocks if k not in set(block_names)]
        bad += [f"sites.{k}" for k in self.sites if k not in set(site_names)]
        if bad:
            example = block_names[0] if block_names else "?"
            raise ConfigError(
                f"plan '{self.name}': {len(bad)} unknown unit(s) for this model and scope: "
                f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} (block names look like '{example}')"
            )

    # --- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "blocks": dict(self.blocks),
            "sites": dict(self.sites),
            "source": dict(self.source),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "plan") -> PrecisionPlan:
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: a plan must be a table, got {type(d).__name__}")
        unknown = set(d) - {"name", "blocks", "sites", "source"}
        if unknown:
            raise ConfigError(
                f"{where}: unknown plan key(s) {sorted(unknown)} (known: name, blocks, sites, source)"
            )
        if "name" not in d:
            raise ConfigError(f"{where}: the plan has no name")
        return cls(
            d["name"], dict(d.get("blocks") or {}), dict(d.get("sites") or {}), dict(d.get("source") or {})
        )

    @property
    def hash(self) -> str:
        """12 hex chars of the canonical content that decides bits (name, blocks, sites; not the provenance)."""
        doc = json.dumps([self.name, sorted(self.blocks.items()), sorted(self.sites.items())], sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:12]

    def save(self, path: str | Path) -> Path:
        """Write the plan as TOML (.toml) or JSON (any other suffix)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".toml":
            import tomli_w

            try:
                p.write_text(tomli_w.dumps(self.to_dict()))
            except TypeError as exc:  # e.g. a None in the free-form provenance: TOML has no null
                raise ConfigError(f"plan '{self.name}': cannot write {p} as TOML ({exc}); use .json") from None
        else:
            p.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))
        return p

    @classmethod
    def load(cls, path: str | Path) -> PrecisionPlan:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: plan file not found")
        try:
            d = tomllib.loads(p.read_text()) if p.suffix == ".toml" else json.loads(p.read_text())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: not a valid plan file ({str(exc).splitlines()[0]})") from exc
        return cls.from_dict(d, where=str(p))

    # --- counting --------------------------------------------------------------------------------
    def average_weight_bits(self, model: Any, scope: str, base: Scheme) -> float:
        """Parameter-weighted mean weight bits over the quantization sites in scope: sum(numel * bits) / sum(numel)."""
        total = weighted = 0
        for blk, lins in model.iter_block_sites(scope):
            for rel, lin in lins.items():
                bits = base.with_plan(self).for_site(f"{blk.name}.{rel}", blk.name).weight.bits
                total += lin.weight.numel()
                weighted += lin.weight.numel() * bits
        return weighted / total if total else float("nan")

