"""The local Beam runner: the DirectRunner's batch engine, without the DirectRunner's detour
through Prism.

Beam 2.77's DirectRunner first tries the Prism runner for most batch pipelines, and Prism's
binary is not in the wheel: it is downloaded from GitHub when a pipeline runs. Offline (these
machines) the download fails and the DirectRunner falls back to its FnApiRunner, after logging
the attempt for every Beam component; online, a local run would fetch a binary and run on a
runner this project never tested, with ``--direct_running_mode`` ignored. ``LocalRunner`` goes
to the FnApiRunner at once and hands it the pipeline's options as the DirectRunner does, so
``--direct_running_mode`` and ``--direct_num_workers`` apply and multi_processing workers see
the options. ``RUNNER`` is how ``--runner`` names it (Beam imports a dotted class path).
"""
from apache_beam.runners.runner import PipelineRunner

RUNNER = "components.beam_runner.LocalRunner"


class LocalRunner(PipelineRunner):
    """Runs a batch pipeline on Beam's FnApiRunner (in-memory, multi-threading or
    multi-processing, as ``--direct_running_mode`` says)."""

    def run_pipeline(self, pipeline, options):
        from apache_beam.portability.api import beam_provision_api_pb2
        from apache_beam.runners.portability.fn_api_runner import fn_runner
        from apache_beam.runners.portability.portable_runner import JobServiceHandle

        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        return fn_runner.FnApiRunner(provision_info=provision).run_pipeline(pipeline, options)
