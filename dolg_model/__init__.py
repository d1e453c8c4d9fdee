"""dolg_model package."""
import dolg_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
