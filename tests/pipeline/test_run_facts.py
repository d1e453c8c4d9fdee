"""The run report's facts that need no pipeline run."""
import json
import random

from pipeline import run_facts


def test_rejected_files_keeps_the_first_paths_in_path_order_whatever_the_line_order(tmp_path):
    # ImageExampleGen's report comes from Beam's shards, so its lines are in no fixed order.
    rows = [{"path": f"/data/l{i % 7}/img{i:03d}.jpg", "reason": "decode_error" if i % 3 else "missing"}
            for i in range(60)]
    random.Random(0).shuffle(rows)
    report = tmp_path / "rejected.jsonl"
    report.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    got = run_facts.rejected_files(str(report), limit=4)
    for reason in ("decode_error", "missing"):
        paths = sorted(r["path"] for r in rows if r["reason"] == reason)
        assert got[reason] == {"count": len(paths), "paths": paths[:4]}
    assert run_facts.rejected_files(str(tmp_path / "none.jsonl")) == {}
