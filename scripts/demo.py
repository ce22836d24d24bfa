"""`make demo`: a real conversion of the sample checkpoint shipped in examples/.

Runs the ckptconv command line the way a user would and prints each command and what it
printed. Outputs go to examples/out/ (git-ignored).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "examples" / "out"


def run(*args: str) -> None:
    shown = " ".join(shlex.quote(a) for a in ("ckptconv", *args))
    print(f"\n$ {shown}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "ckptconv", *args], cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"demo failed: `{shown}` exited with status {proc.returncode}")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    sample = "examples/sample.keras"
    run("inspect", sample)
    run("convert", sample, "examples/out/sample.safetensors", "--force")
    run("verify", "examples/out/sample.safetensors")
    spec = ROOT / "examples" / "specs" / "demo_feature_extractor.yaml"
    if spec.exists():
        run("plan", sample, "--map", str(spec.relative_to(ROOT)))
        run("convert", sample, "examples/out/feature_extractor_bf16.safetensors",
            "--map", str(spec.relative_to(ROOT)), "--force")
        run("inspect", "examples/out/feature_extractor_bf16.safetensors")
    run("convert", "examples/sample_tf_keras.h5", "examples/out/sample_tf_keras.safetensors", "--force")
    print(f"\ndemo done: outputs in {OUT.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
