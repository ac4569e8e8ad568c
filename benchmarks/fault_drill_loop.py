"""Repeat the issue's fault drill N times: 2 gloo ranks under torchrun --max-restarts 1, rank 1 SIGKILLed at
step 4 of the first attempt; count runs that did not finish (exit code != 0).

    .venv/bin/python benchmarks/fault_drill_loop.py 12 share     # torchrun's default (agent store shared)
    .venv/bin/python benchmarks/fault_drill_loop.py 12 noshare   # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, as --nproc sets
"""
import os, subprocess, sys, tempfile
from pathlib import Path
from resnets.data.synthetic import make_image_folder
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "train"))
from test_dist_training import _cli_args, KILL_AT_STEP
n, share = int(sys.argv[1]), sys.argv[2]
tmp = Path(tempfile.mkdtemp())
data = make_image_folder(tmp / "data", classes=3, per_class=16, size=8)
fails = 0
for i in range(n):
    out = tmp / f"run{i}"
    env = {**os.environ, "RESNETS_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1", "RESNETS_FAULT_KILL": f"1:{KILL_AT_STEP}"}
    if share == "noshare":
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "--max-restarts", "1", "--monitor-interval", "0.5", "-m", "resnets", *_cli_args(data, out)],
                       env=env, capture_output=True, text=True, timeout=300)
    bad = p.returncode != 0
    fails += bad
    print(i, "rc", p.returncode, "terminate" in p.stderr, flush=True)
    if bad:
        (tmp / f"fault_{share}_{i}.err").write_text(p.stderr)
print(share, "failures", fails, "of", n)
