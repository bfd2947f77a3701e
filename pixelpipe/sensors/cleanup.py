"""Run-status sensors that remove a run's NVMe staging directories when the run ends."""

import dagster as dg

from pixelpipe.io_managers.batches import cleanup_run
from pixelpipe.settings import Settings


def nvme_cleanup_sensors(settings: Settings) -> list[dg.SensorDefinition]:
    """Success, failure and cancel sensors; NVME_KEEP=1 keeps the files for inspection."""

    def _clean(context: dg.RunStatusSensorContext) -> None:
        if settings.nvme_keep:
            return
        removed = cleanup_run(settings.nvme_root.resolve(), context.dagster_run.run_id)
        if removed:
            context.log.info(f"removed {', '.join(map(str, removed))}")

    @dg.run_status_sensor(
        name="nvme_cleanup_on_success",
        run_status=dg.DagsterRunStatus.SUCCESS,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def on_success(context: dg.RunStatusSensorContext) -> None:
        _clean(context)

    @dg.run_status_sensor(
        name="nvme_cleanup_on_failure",
        run_status=dg.DagsterRunStatus.FAILURE,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def on_failure(context: dg.RunStatusSensorContext) -> None:
        _clean(context)

    @dg.run_status_sensor(
        name="nvme_cleanup_on_cancel",
        run_status=dg.DagsterRunStatus.CANCELED,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def on_cancel(context: dg.RunStatusSensorContext) -> None:
        _clean(context)

    return [on_success, on_failure, on_cancel]
