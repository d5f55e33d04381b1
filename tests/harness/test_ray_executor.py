"""The Ray executor on a local 2-CPU Ray instance: same metrics as in-process, one FP pass per group across
workers, a killed worker's cell retried and stored once, a stopped driver resumed from the store."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from ptq3d.errors import ConfigError, UserError
from ptq3d.harness.config import load_config
from ptq3d.harness.executors import InProcessExecutor, make_executor
from ptq3d.harness.ray_executor import RayExecutor, RayOptions, fp_group, parse_ray_options
from ptq3d.harness.sweep import run_grid
from ptq3d.results.store import ResultsStore
from tests.harness.conftest import GRID
from tests.harness.fakes import FakeComponents

# GRID ends in [eval]; 7 cells: FP, rtn x 2 schemes x 2 seeds, wonly x 2 schemes
# (no real stage: the toy emulated backend cannot run w4a4, which fails those cells by design)
SMALL = GRID + 'threads = 1\noutlier_stats = false\nreal_backend = "none"\n'


class KillingComponents(FakeComponents):
    """The fake components plus method config key `kill` (a marker path): quantize SIGKILLs its own process
    the first time (when the marker does not exist yet) or, with `kill_always`, every time."""

    def check_method_config(self, method, config):
        super().check_method_config(
            method, {k: v for k, v in config.items() if k not in ("kill", "kill_always")}
        )

    def quantize(self, model, method, scheme, calibration, config, scope, progress=False):
        marker = config.get("kill")
        if marker:
            first = not Path(marker).exists()
            with open(marker, "a") as f:  # one line per attempt
                f.write(f"{os.getpid()}\n")
            if first or config.get("kill_always"):
                os.kill(os.getpid(), signal.SIGKILL)
        rest = {k: v for k, v in config.items() if k not in ("kill", "kill_always")}
        return super().quantize(model, method, scheme, calibration, rest, scope, progress)


KILLING = "tests.harness.test_ray_executor:KillingComponents"


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance (2 CPUs) for the module: start-up costs ~10 s."""
    import ray  # installed by scripts/install.sh (extra "distributed"); missing ray is a failure, not a skip

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _killing_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "kill.toml"
    out = tmp_path / "out"
    path.write_text(f'[run]\ncomponents = "{KILLING}"\nschemes = ["w8a8"]\noutput_dir = "{out}"\n{body}')
    return path


def _metrics(store_path: Path) -> dict[tuple, float]:
    with ResultsStore(store_path) as st:
        return {(r["cell_id"], r["stage"], r["scene"], r["metric"]): r["value"] for r in st.metric_rows()}


def _cells(store_path: Path) -> list[dict]:
    with ResultsStore(store_path) as st:
        return st.cells()


def test_ray_matches_in_process_and_shares_one_fp_pass(ray_local, make_config, tmp_path):
    cfg = load_config(make_config(SMALL))
    local = run_grid(cfg, tmp_path / "local.sqlite", InProcessExecutor())
    cfg.cache_dir = str(tmp_path / "ray-cache")  # a cold cache: the Ray run makes its own FP pass
    remote = run_grid(cfg, tmp_path / "ray.sqlite", RayExecutor())
    assert remote.ran == local.ran == 7 and not remote.failed
    a, b = _metrics(tmp_path / "local.sqlite"), _metrics(tmp_path / "ray.sqlite")
    assert len(a) > 7 * 3 and a.keys() == b.keys()
    assert a == b  # the same metric values per cell, bit for bit
    # one FP pass over the 2 scenes for the whole grid, although 2 workers ran cells side by side
    assert remote.counters["fp_passes"] == 2 and remote.counters["fp_cache_hits"] == 6 * 2
    hosts = [c["provenance"]["executor"] for c in _cells(tmp_path / "ray.sqlite")]
    assert all(h["name"] == "ray" and h["attempts"] == 1 for h in hosts)
    assert len({h["pid"] for h in hosts}) >= 1 and all(h["pid"] != os.getpid() for h in hosts)


def test_object_store_cache_relay(ray_local, make_config, tmp_path):
    cfg = load_config(make_config(SMALL))
    local = run_grid(cfg, tmp_path / "local.sqlite", InProcessExecutor())
    cfg.cache_dir = str(tmp_path / "driver-cache")
    s = run_grid(cfg, tmp_path / "ray.sqlite", RayExecutor(RayOptions(cache="object-store")))
    assert s.ran == local.ran == 7 and not s.failed
    assert _metrics(tmp_path / "local.sqlite") == _metrics(tmp_path / "ray.sqlite")
    # workers ran in private cache dirs: the group's FP entries travelled through the object store
    assert s.counters["fp_passes"] == 2 and s.counters["fp_cache_hits"] == 6 * 2
    entries = list((tmp_path / "driver-cache" / "fp").rglob("*.safetensors"))
    assert len(entries) == 2  # ... and came back to the driver's cache directory


def test_worker_killed_mid_cell_is_retried_and_stored_once(ray_local, tmp_path):
    marker = tmp_path / "attempts.txt"
    body = SMALL.replace('name = "wonly"', f'name = "wonly"\nconfig = {{ kill = "{marker}" }}')
    cfg = load_config(_killing_config(tmp_path, body))
    s = run_grid(cfg, executor=RayExecutor(RayOptions(max_retries=2)))
    assert marker.read_text().count("\n") == 2  # killed on attempt 1, finished on attempt 2
    assert s.total == s.ran == 4 and not s.failed  # FP, rtn x 2 seeds, wonly
    cells = _cells(Path(cfg.output_dir) / "results.sqlite")
    assert (
        len(cells) == 4
        and len({c["cell_id"] for c in cells}) == 4
        and all(c["status"] == "ok" for c in cells)
    )
    killed = next(c for c in cells if c["method"] == "wonly")
    ex = killed["provenance"]["executor"]
    assert ex["attempts"] == 2 and "WorkerCrashedError" in ex["attempt_errors"][0]
    others = [c for c in cells if c["method"] != "wonly"]
    assert all(c["provenance"]["executor"]["attempts"] == 1 for c in others)


def test_worker_killed_every_attempt_is_recorded_failed(ray_local, tmp_path):
    marker = tmp_path / "attempts.txt"
    body = SMALL.replace(
        'name = "wonly"', f'name = "wonly"\nconfig = {{ kill = "{marker}", kill_always = 1 }}'
    )
    body = body.replace('[[methods]]\nname = "rtn"\nlabel = "RTN"\n', "")
    cfg = load_config(_killing_config(tmp_path, body))
    s = run_grid(cfg, executor=RayExecutor(RayOptions(max_retries=1)))
    assert marker.read_text().count("\n") == 2  # the first attempt and one retry
    assert s.ran == 2 and len(s.failed) == 1
    what, reason = s.failed[0]
    assert "wonly" in what and "worker died 2 times" in reason and "WorkerCrashedError" in reason
    cells = {c["method"]: c for c in _cells(Path(cfg.output_dir) / "results.sqlite")}
    assert cells["wonly"]["status"] == "failed" and cells["fp"]["status"] == "ok"


class _DriverDied(Exception):
    pass


def test_driver_stopped_mid_grid_resumes_from_the_store(ray_local, make_config, tmp_path):
    cfg = load_config(make_config(SMALL))
    seen: list[str] = []

    def die_after_three(result):
        seen.append(result.cell_id)
        if len(seen) == 3:
            raise _DriverDied

    with pytest.raises(_DriverDied):
        run_grid(cfg, executor=RayExecutor(), on_result=die_after_three)
    store = Path(cfg.output_dir) / "results.sqlite"
    first = {c["cell_id"]: c["finished_at"] for c in _cells(store)}
    assert set(first) == set(seen)  # what was yielded is stored: nothing lost
    again = run_grid(cfg, executor=RayExecutor())
    assert again.skipped == 3 and again.ran == 4 and not again.failed
    after = {c["cell_id"]: c["finished_at"] for c in _cells(store)}
    assert len(after) == 7 and all(after[k] == v for k, v in first.items())  # no finished cell recomputed


def test_fp_reference_leads_its_group(make_config):
    cells = load_config(make_config(SMALL)).cells()
    assert len({fp_group(c) for c in cells}) == 1
    wide = load_config(
        make_config(SMALL.replace('name = "toy"', 'name = "toy"\n[[models]]\nname = "toy-wide"'))
    )
    assert len({fp_group(c) for c in wide.cells()}) == 2


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UserError, match=r"pip install \"ptq3d\[distributed\]\""):
        make_executor("ray")


def test_make_executor_ray(ray_local):
    ex = make_executor("ray", ray={"num_cpus": 2, "max_retries": 3}, address="auto")
    assert isinstance(ex, RayExecutor)
    assert ex.options.num_cpus == 2 and ex.options.max_retries == 3 and ex.options.address == "auto"


@pytest.mark.parametrize(
    "table, message",
    [
        ({"num_cpu": 1}, "unknown key 'num_cpu'; did you mean 'num_cpus'?"),
        ({"max_retries": "3"}, "max_retries = '3': expected int"),
        ({"max_retries": -1}, "max_retries = -1: must be >= 0"),
        ({"num_gpus": "all"}, "num_gpus = 'all': expected a number or \"auto\""),
        ({"cache": "nfs"}, "cache = 'nfs': allowed values are auto, shared, object-store"),
        ({"local_cpus": True}, "local_cpus = True: expected int"),
    ],
)
def test_bad_ray_table(table, message):
    with pytest.raises(ConfigError) as err:
        parse_ray_options(table, "grid.toml")
    assert str(err.value).startswith("grid.toml: [ray]") and message in str(err.value)


def test_ray_table_parses(tmp_path):
    o = parse_ray_options(
        {"num_gpus": 0.5, "memory_gb": 8, "cache": "shared", "shared_cache_dir": "cache"}, "x.toml", tmp_path
    )
    assert o.num_gpus == 0.5 and o.memory_gb == 8 and o.shared_cache_dir == str(tmp_path / "cache")


@pytest.mark.slow
def test_starts_and_stops_its_own_local_instance(make_config, tmp_path):
    """Without an address (and no Ray running in the process) the executor starts a local instance and shuts
    it down when the grid is done; in a subprocess, so the module's shared instance is not in the way."""
    import subprocess

    pytest.importorskip("ray")
    cfg = make_config(SMALL, run='schemes = ["w8a8"]')
    code = (
        "import ray, sys\n"
        "from ptq3d.harness.config import load_config\n"
        "from ptq3d.harness.ray_executor import RayExecutor, RayOptions\n"
        "from ptq3d.harness.sweep import run_grid\n"
        f"s = run_grid(load_config({str(cfg)!r}), executor=RayExecutor(RayOptions(local_cpus=2)))\n"
        "assert s.ran == 4 and not s.failed, s\n"
        "assert not ray.is_initialized()\n"
        "print('OK', s.counters['fp_passes'])\n"
    )
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK 2" in out.stdout


def test_cli_run_with_ray_executor(ray_local, make_config, tmp_path, capsys):
    """`ptq3d run CONFIG --executor ray` reaches the Ray executor (joining the running local instance) and
    stores the same cells as the in-process run."""
    from ptq3d.harness.cli import main

    path = make_config(SMALL)
    assert main(["run", str(path), "--executor", "ray", "--no-report", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ran 7 cells" in out and "0 failed" in out
    cells = _cells(tmp_path / "out" / "results.sqlite")
    assert len(cells) == 7 and all(c["provenance"]["executor"]["name"] == "ray" for c in cells)
