"""What a pipeline process imports: TFX's own modules, never the public ``tfx.v1``, whose import
loads every extension (google.cloud.aiplatform's clients: about 3 s of each process's start-up,
paid by every CLI run, Trainer worker and benchmark process)."""
import subprocess
import sys

# Built with a gallery (so GalleryIndexer is in it) and the Trainer's module imported: what a
# local run and each of its worker processes load.
PROBE = """
import sys
import dolg_tfx
from pipeline import config as pc, trainer
from pipeline.pipeline import create_pipeline
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
config = pc.load_config("tiny", gallery="/nowhere/gallery")
create_pipeline(config, data="/nowhere/data", pipeline_root="/nowhere/root", serving_model_dir="/nowhere/serving",
                schema_file="/nowhere/schema.pbtxt", preprocessing_fn=pc.PREPROCESSING_FN, run_fn=pc.RUN_FN,
                metadata_path="/nowhere/m.sqlite", gallery_index_dir="/nowhere/index")
print(sorted(m for m in sys.modules if m == "tfx.v1" or m.startswith(("tfx.v1.", "google.cloud.aiplatform"))))
"""


def test_a_pipeline_process_never_imports_tfx_v1_or_its_cloud_extensions():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
