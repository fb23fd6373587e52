"""Ray Serve contained in a loopback-only network namespace (`infra/isolated.sh`).

Ray listens on every interface whatever it is told; inside the namespace the only interface is
`lo`, so the teacher still answers on 127.0.0.1 while none of Ray's ports is reachable from
outside. This runs a real Ray + Serve teacher in the namespace and checks both halves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Runs inside the namespace: start Ray + the noop teacher, judge one pair over HTTP, report.
INSIDE = r"""
import json, sys
from pathlib import Path
import httpx
from schemas.settings import RaySettings, Settings
from workers.deployment import deploy
from workers.runtime import shutdown

state = Path(sys.argv[1])
settings = Settings(state_dir=state, ray=RaySettings(num_cpus=2, serve_port=18555))
deploy(settings, "policies/product-search.yaml", backend="noop")
event = json.loads(Path("data/wands/events.jsonl").read_text(encoding="utf-8").splitlines()[0])
request = {"event_id": event["event_id"], "category": event["category"], "event_time": event["event_time"],
           "query": event["request"]["query"], "item": event["items"][0]}
answer = httpx.post("http://127.0.0.1:18555/teacher", json={"requests": [request]}, timeout=60).json()
listeners = 0
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    listeners += sum(1 for line in Path(table).read_text().splitlines()[1:] if line.split()[3] == "0A")
interfaces = [line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]]
shutdown()
first = answer["judgments"][0]
print("RESULT " + json.dumps({"interfaces": interfaces, "listeners": listeners,
                              "judged": len(answer["judgments"]), "status": first["status"]}))
"""


@pytest.mark.integration
def test_ray_serve_runs_contained_in_a_loopback_only_namespace(
    tmp_path: Path, report_figures: object
) -> None:
    command = [str(ROOT / "infra" / "isolated.sh"), sys.executable, "-c", INSIDE, str(tmp_path / "state")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (
        f"isolated run failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["interfaces"] == ["lo"], "the namespace must have no interface but loopback"
    assert result["judged"] == 1 and result["status"] == "ok", "the contained teacher must still answer"
    assert result["listeners"] > 3, "Ray's ports exist, but only on the namespace's loopback"
    report_figures("ray in a loopback-only namespace", result)  # type: ignore[operator]
