"""Benchmarks: scripts that print ratios measured side by side in one run (never timed tests)."""
import dolg_tfx  # noqa: F401
