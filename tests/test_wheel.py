"""A pip-installed memz (a built wheel, not an editable install) makes a home that runs.

The wheel is built from this checkout and installed into a fresh virtual
environment; memz's dependencies come from the test environment's
site-packages (a .pth file), so nothing is downloaded, and the memzd package
itself comes only from the wheel. Then that environment's own `memzctl init`
and `memzd --once` train a dropped file on the tiny model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


def test_a_wheel_installed_with_pip_makes_a_home_that_trains(tmp_path, tiny_model_dir):
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, REPO)
    (wheel,) = wheels.glob("memz-*.whl")

    env_dir = tmp_path / "fresh"
    run(sys.executable, "-m", "venv", "--without-pip", env_dir)
    fresh_python = env_dir / "bin" / "python"
    site = Path(run(fresh_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co., not memzd
    run(sys.executable, "-m", "pip", "--python", fresh_python, "install", "--no-deps", "--no-index", wheel)

    where = run(fresh_python, "-c", "import memzd; print(memzd.__file__)", cwd=tmp_path).stdout.strip()
    assert where.startswith(str(site)), f"memzd came from {where}, not the wheel"

    home = tmp_path / "notes"
    clean = {k: v for k, v in os.environ.items() if k not in ("MEMZ_HOME", "PYTHONPATH")}
    run(env_dir / "bin" / "memzctl", "init", home, env=clean, cwd=tmp_path)
    assert (home / "anchors" / "default.jsonl").is_file() and (home / "memz.db").is_file()
    config = yaml.safe_load((home / "config.yaml").read_text())
    config.update(base_model=str(tiny_model_dir), update_mode="immediate")
    config["training"].update(max_steps=4, eval_every=0)
    config["evaluation"].update(anchor_sample=4, anchor_max_tokens=4)
    (home / "config.yaml").write_text(yaml.safe_dump(config))
    (home / "inbox" / "facts.jsonl").write_text(json.dumps({"input": "Who is Orla?", "output": "A cat owner."}) + "\n")
    run(env_dir / "bin" / "memzd", "--home", home, "--once", env=clean, cwd=tmp_path)
    status = json.loads(run(env_dir / "bin" / "memzctl", "--home", home, "status", "--json", env=clean,
                            cwd=tmp_path).stdout)
    assert status["current_checkpoint"] is not None and status["queue_depth"] == 0
