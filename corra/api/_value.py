"""``GET /v1/processes/{id}/value``: the value a process's program wrote to
``$CORRA_RESULT``, as JSON, wherever the service keeps it (in its record, or, larger than
64 KiB, in a file of its state dir: `corra.processes._values`)."""

from __future__ import annotations

from pathlib import Path

import trio
from starlette.responses import JSONResponse, Response

from corra._statedir import read_private
from corra.api._requests import ApiError
from corra.processes._record import ProcessRecord


async def value_response(record: ProcessRecord) -> Response:
    """The value of ``record``'s latest result: 200 with the JSON (``null`` too, when that is
    what the program wrote); 404 ``no_value`` saying why there is none (no result yet, none
    written, refused); 410 ``value_gone`` when its file is gone."""
    result = record.state.result
    why = None
    if result is None:
        why = f"it has no result yet (it is {record.phase})"
    elif result.value_error is not None:
        why = f"its value was refused: {result.value_error}"
    elif not result.has_value:
        why = "its program wrote no value to $CORRA_RESULT"
    if why is not None or result is None:
        raise ApiError(404, "no_value", f"process {record.id} ({record.name}): {why}")
    if result.value_file is None:
        return JSONResponse(result.value)
    try:  # (checked JSON when it was kept: sent as it is)
        data = await trio.to_thread.run_sync(
            lambda: read_private(Path(str(result.value_file)), what="result value")
        )
    except OSError as exc:
        raise ApiError(410, "value_gone", f"process {record.id}: {exc}") from None
    return Response(data, media_type="application/json")
